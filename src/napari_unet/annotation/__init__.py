"""Stage 1 -- annotations: the label-value schema, the U-Net weight maps and the settings the
annotated objects imply (min size, hole filling, object diameter)."""
