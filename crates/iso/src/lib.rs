//! ISO 9660 disc images: write (Joliet, Rock Ridge, El Torito, hybrid MBR/GPT), read, verify.
