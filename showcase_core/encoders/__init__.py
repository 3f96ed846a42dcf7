"""Image and text encoders (CLIP via open_clip)."""
