//! Virtual disk formats: raw, VMDK, VHD, VHDX and qcow2, with qemu-img compatible operations.
