"""The DICOM node: a C-STORE / C-ECHO SCP that stores radiographs durably and queues them."""
