//! VHD: fixed, dynamic and differencing images (footer, dynamic header, BAT, parent locators).
