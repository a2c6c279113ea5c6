"""Localization from frozen ViT outputs: object discovery (CorLoc; LOST, DINO-seg, LAST vote-map boxes) and
coarse foreground segmentation from patch scores. Pure functions on arrays: evaluators call them on the taps
the forward pass emitted; nothing here loads images or models.
"""
