"""Stage 3 -- inference: overlap-tile prediction, post-processing into instances, whole stacks
(dask, distributed), the planes to annotate next, and the widgets' background jobs."""
