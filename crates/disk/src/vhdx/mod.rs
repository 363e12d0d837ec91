//! VHDX: fixed, dynamic and differencing images (headers, log replay, region table, metadata, BAT).
