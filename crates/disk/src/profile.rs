//! Target profiles (ESXi/vSphere, Azure, Hyper-V): the fields those targets check, and why an image would be refused.
