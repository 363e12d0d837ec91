//! The vmedia image library: content-addressed, deduplicated image versions with a timeline,
//! stored in a folder or an S3 object store shared by many hosts.
