"""Image indexes, labels, boxes and masks, filters with a kept/dropped report, transforms as specs."""
