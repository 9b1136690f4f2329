"""The web worklist for radiologists and the operations console for PACS admins."""
