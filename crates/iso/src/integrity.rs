//! Embedded integrity: checkisomd5-compatible MD5, SHA-256 and ed25519 signatures inside an image.
