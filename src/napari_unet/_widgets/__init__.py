"""The napari dock widgets of napari-unet (the only Qt code of the package).

``annotate.AnnotateWidget`` -> ``weightmap.WeightMapWidget`` -> ``train.TrainWidget`` ->
``segment.SegmentWidget``; they share state through layer metadata (keys starting with
``napari_unet_``) and through :mod:`napari_unet._widgets._session` (the model just trained).
"""
