"""Training-free zero-shot semantic segmentation for CLIP towers (the SCLIP / NACLIP protocol).

`protocol` (per-dataset settings from `assets/seg_datasets.json`, class-name files, the resize rule),
`datasets` (mmsegmentation layouts -> image, label, label decoder), `dense` (dense CLIP patch
embeddings and logits -> labels), `sliding` (224/112 sliding windows, batched across images) and
`miou` (confusion matrix, mIoU, pixel accuracy, bootstrap over images).
"""
