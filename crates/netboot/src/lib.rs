//! Network boot server: proxy/full DHCP, TFTP with option extensions, HTTP, iPXE scripts.
