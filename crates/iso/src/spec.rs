//! `IsoSpec`: everything the writer needs to know about the image to make.
