"""Worker-side code both worker kinds use: signal handling, the fork server's preload, Hugging
Face model building."""
