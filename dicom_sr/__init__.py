"""The report objects sent back to the PACS: TID 1500 SR, lesion SEG, summary image."""
