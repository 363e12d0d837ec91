//! Writing ISO 9660 images from an `IsoSpec`.
