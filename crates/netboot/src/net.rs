//! Linux socket plumbing the standard library lacks: the local address a datagram arrived on
//! (IP_PKTINFO), batched sends (sendmmsg), binding to an interface, and interface addresses.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::RawFd;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int with its size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Asks the kernel to report each datagram's local address.
pub fn enable_pktinfo(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
}

pub fn enable_broadcast(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, 1)
}

pub fn enable_reuseaddr(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
}

/// Larger socket buffers keep bursts of windowed DATA packets from being dropped.
pub fn set_buffers(fd: RawFd, bytes: libc::c_int) {
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes);
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes);
}

/// Restricts a socket to one interface (broadcast DHCP must not leak to other networks).
pub fn bind_to_device(fd: RawFd, interface: &str) -> io::Result<()> {
    // SAFETY: passes the interface name bytes and their length.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_ptr() as *const libc::c_void,
            interface.len() as libc::socklen_t,
        )
    })
    .map(|_| ())
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind to interface {interface}: {e}"),
        )
    })
}

/// Receives one datagram; returns its length, sender and the local address it was sent to.
pub fn recv_with_local(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<Ipv4Addr>)> {
    // SAFETY: all structures are zero-initialised and sized; recvmsg writes within them.
    unsafe {
        let mut name: libc::sockaddr_in = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = &mut name as *mut libc::sockaddr_in as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of::<[u64; 16]>();
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut local = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo);
                local = Some(Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
            u16::from_be(name.sin_port),
        ));
        Ok((n as usize, from, local))
    }
}

/// Most datagrams one sendmmsg call takes (a full window at the largest window size).
pub const MAX_BATCH: usize = 64;

/// Sends `packets` (each a header and a payload) on a connected socket with as few system
/// calls as possible; returns how many went out (the rest would block).
pub fn send_batch(fd: RawFd, packets: &[([u8; 4], &[u8])]) -> io::Result<usize> {
    let count = packets.len().min(MAX_BATCH);
    // SAFETY: iovecs point into `packets`, which outlives the call; arrays are sized MAX_BATCH.
    unsafe {
        let mut iovecs: [[libc::iovec; 2]; MAX_BATCH] = zeroed();
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = zeroed();
        for i in 0..count {
            let (header, payload) = &packets[i];
            iovecs[i][0] = libc::iovec {
                iov_base: header.as_ptr() as *mut libc::c_void,
                iov_len: 4,
            };
            iovecs[i][1] = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
            msgs[i].msg_hdr.msg_iov = iovecs[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 2;
        }
        let sent = libc::sendmmsg(fd, msgs.as_mut_ptr(), count as libc::c_uint, 0);
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// An interface's first IPv4 address and netmask.
pub fn interface_ipv4(interface: &str) -> io::Result<(Ipv4Addr, Ipv4Addr)> {
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        check(libc::getifaddrs(&mut list))?;
        let mut cur = list;
        let mut found = None;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as libc::c_int == libc::AF_INET
            {
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
                if name == interface {
                    let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let mask = if ifa.ifa_netmask.is_null() {
                        Ipv4Addr::new(255, 255, 255, 0)
                    } else {
                        Ipv4Addr::from(u32::from_be(
                            (*(ifa.ifa_netmask as *const libc::sockaddr_in))
                                .sin_addr
                                .s_addr,
                        ))
                    };
                    found = Some((Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), mask));
                    break;
                }
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
        found.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("interface {interface} has no IPv4 address"),
            )
        })
    }
}

/// A bound UDP socket as a tokio socket, with options set before binding.
pub fn udp_socket(
    addr: SocketAddrV4,
    interface: Option<&str>,
    broadcast: bool,
) -> io::Result<tokio::net::UdpSocket> {
    tokio::net::UdpSocket::from_std(bind_udp(addr, interface, broadcast, true)?)
}

/// A bound UDP socket, with options set before binding; blocking unless `nonblocking`.
pub fn bind_udp(
    addr: SocketAddrV4,
    interface: Option<&str>,
    broadcast: bool,
    nonblocking: bool,
) -> io::Result<std::net::UdpSocket> {
    let flags = if nonblocking {
        libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK
    } else {
        libc::SOCK_DGRAM | libc::SOCK_CLOEXEC
    };
    // SAFETY: plain socket(2); ownership moves into the std socket right after.
    let fd = check(unsafe { libc::socket(libc::AF_INET, flags, 0) })?;
    // SAFETY: fd is a fresh socket we own.
    let socket = unsafe { <std::net::UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    enable_reuseaddr(fd)?;
    if broadcast {
        enable_broadcast(fd)?;
    }
    if let Some(ifname) = interface {
        bind_to_device(fd, ifname)?;
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: binds to a valid sockaddr_in of the right size.
    check(unsafe {
        libc::bind(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
    Ok(socket)
}

/// `UDP_SEGMENT` from linux/udp.h (not exported by libc for every target environment).
const UDP_SEGMENT: libc::c_int = 103;
/// Largest UDP payload of one datagram, hence of one segmentation-offload send (IPv4's 16-bit
/// total length minus the IP and UDP headers).
pub const MAX_GSO_BYTES: usize = 65_507;
/// Segments one offload send may carry (the kernel's UDP_MAX_SEGMENTS before 6.x raised it).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Sends `packets` on a connected socket as few large datagrams that the kernel cuts into
/// `segment`-byte datagrams (UDP generic segmentation offload): the stack is walked once per
/// group instead of once per packet, and the receiver sees ordinary datagrams. Every packet but
/// the last must be exactly `segment` bytes. Returns how many packets went out.
pub fn send_segmented(
    fd: RawFd,
    packets: &[([u8; 4], &[u8])],
    segment: usize,
) -> io::Result<usize> {
    let per_message = (MAX_GSO_BYTES / segment.max(1)).clamp(1, MAX_GSO_SEGMENTS);
    let count = packets.len().min(MAX_BATCH);
    let message_count = count.div_ceil(per_message);
    // SAFETY: iovecs and control buffers live on this stack frame for the whole call and are
    // sized MAX_BATCH (a message never holds more packets than the batch).
    unsafe {
        let mut iovecs: [[libc::iovec; 2]; MAX_BATCH] = zeroed();
        let mut controls: [[u64; 4]; MAX_BATCH] = zeroed();
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = zeroed();
        for (i, (header, payload)) in packets.iter().take(count).enumerate() {
            iovecs[i][0] = libc::iovec {
                iov_base: header.as_ptr() as *mut libc::c_void,
                iov_len: 4,
            };
            iovecs[i][1] = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
        }
        for m in 0..message_count {
            let first = m * per_message;
            let in_message = (count - first).min(per_message);
            let hdr = &mut msgs[m].msg_hdr;
            hdr.msg_iov = iovecs[first].as_mut_ptr();
            hdr.msg_iovlen = 2 * in_message;
            if in_message > 1 {
                let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
                hdr.msg_control = controls[m].as_mut_ptr() as *mut libc::c_void;
                hdr.msg_controllen = space;
                let cmsg = libc::CMSG_FIRSTHDR(hdr);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment as u16);
            }
        }
        let sent = libc::sendmmsg(fd, msgs.as_mut_ptr(), message_count as libc::c_uint, 0);
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((sent as usize * per_message).min(count))
    }
}

/// Receives one datagram if one is queued; `None` when the socket is empty.
pub fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: writes at most buf.len() bytes into buf.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// Waits until `fd` is readable or `timeout` passes; true when readable.
pub fn wait_readable(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so a sub-millisecond remainder still waits instead of spinning.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    if ready < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(ready > 0)
}

/// The MTU of the route a connected socket sends on (IP_MTU).
pub fn path_mtu(fd: RawFd) -> io::Result<usize> {
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live c_int and its size.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU,
            &mut mtu as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(mtu.max(0) as usize)
}
