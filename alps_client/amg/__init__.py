"""Stage 1, automatic mask generation: Meta's ``SamAutomaticMaskGenerator`` in numpy on any SAM backend."""
