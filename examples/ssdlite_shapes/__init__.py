"""SSDLite shapes detector: torchvision SSDLite (width 0.5, 192 px) trained from scratch on skimage shapes."""
