//! Linux socket plumbing the standard library lacks: the local address a datagram arrived on
//! (IP_PKTINFO, IPV6_PKTINFO), batched and segmentation-offload sends (sendmmsg, UDP_SEGMENT), binding to an
//! interface, interface addresses, non-blocking receive, poll and the route's MTU.
//!
//! System calls go through rustix where it covers them (socket, bind, socket options, sendmmsg,
//! recv, poll, IP_MTU). Raw libc remains, each in one small function, only where rustix 1.1 has
//! no safe API: IP_PKTINFO and IPV6_RECVPKTINFO (the options and their control messages),
//! SO_BINDTODEVICE, the
//! UDP_SEGMENT control message on sendmmsg, and getifaddrs.

use std::io;
use std::io::IoSlice;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::{
    sockopt, AddressFamily, MMsgHdr, RecvFlags, SendAncillaryBuffer, SendFlags, SocketFlags,
    SocketType,
};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Asks the kernel to report each datagram's local address: IP_PKTINFO on an IPv4 socket,
/// IPV6_RECVPKTINFO on an IPv6 one (neither is in rustix).
pub fn enable_pktinfo(fd: impl AsFd) -> io::Result<()> {
    let ipv6 = rustix::net::getsockname(&fd)?.address_family() == AddressFamily::INET6;
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let value: libc::c_int = 1;
    // SAFETY: passes a pointer to a live c_int with its size, on a descriptor we borrow.
    check(unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            option,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Larger socket buffers keep bursts of windowed DATA packets from being dropped.
pub fn set_buffers(fd: impl AsFd, bytes: usize) -> io::Result<()> {
    sockopt::set_socket_send_buffer_size(&fd, bytes)?;
    sockopt::set_socket_recv_buffer_size(&fd, bytes)?;
    Ok(())
}

/// Restricts a socket to one interface (broadcast DHCP must not leak to other networks).
/// SO_BINDTODEVICE is not in rustix.
pub fn bind_to_device(fd: impl AsFd, interface: &str) -> io::Result<()> {
    // SAFETY: passes the interface name bytes and their length, on a descriptor we borrow.
    check(unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
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

/// True for fe80::/10, whose addresses mean something only with an interface (scope) index.
fn is_link_local6(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// Receives one datagram; returns its length, sender and the local address it was sent to
/// (port 0; an IPv6 link-local one carries the interface it arrived on as its scope).
/// rustix's `recvmsg` decodes only SCM_RIGHTS and SCM_CREDENTIALS, not the PKTINFO messages.
pub fn recv_with_local(
    fd: impl AsFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    // SAFETY: all structures are zero-initialised and sized; recvmsg writes within them; the
    // sender is read as the family the kernel reports; the control messages are walked with
    // the kernel's CMSG macros within `control`.
    unsafe {
        let mut name: libc::sockaddr_storage = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = &mut name as *mut libc::sockaddr_storage as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of::<[u64; 16]>();
        let n = libc::recvmsg(fd.as_fd().as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut local = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::IPPROTO_IP && (*cmsg).cmsg_type == libc::IP_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo);
                let ip = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                local = Some(SocketAddr::V4(SocketAddrV4::new(ip, 0)));
            } else if (*cmsg).cmsg_level == libc::IPPROTO_IPV6
                && (*cmsg).cmsg_type == libc::IPV6_PKTINFO
            {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in6_pktinfo);
                let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                let scope = if is_link_local6(&ip) {
                    info.ipi6_ifindex
                } else {
                    0
                };
                local = Some(SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, scope)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = match i32::from(name.ss_family) {
            libc::AF_INET6 => {
                let sin6 = &*(&name as *const libc::sockaddr_storage as *const libc::sockaddr_in6);
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                ))
            }
            _ => {
                let sin = &*(&name as *const libc::sockaddr_storage as *const libc::sockaddr_in);
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                ))
            }
        };
        Ok((n as usize, from, local))
    }
}

/// Most datagrams one sendmmsg call takes (a full window at the largest window size).
pub const MAX_BATCH: usize = 64;

/// Sends `packets` (each a header and a payload) on a connected socket with as few system
/// calls as possible; returns how many went out (the rest would block).
pub fn send_batch(fd: impl AsFd, packets: &[([u8; 4], &[u8])]) -> io::Result<usize> {
    let count = packets.len().min(MAX_BATCH);
    let iovecs: [[IoSlice<'_>; 2]; MAX_BATCH] = std::array::from_fn(|i| match packets.get(i) {
        Some((header, payload)) => [IoSlice::new(header), IoSlice::new(payload)],
        None => [IoSlice::new(&[]), IoSlice::new(&[])],
    });
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; MAX_BATCH] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut messages: Vec<MMsgHdr<'_>> = iovecs
        .iter()
        .zip(controls.iter_mut())
        .take(count)
        .map(|(iov, control)| MMsgHdr::new(iov, control))
        .collect();
    Ok(rustix::net::sendmmsg(
        fd,
        &mut messages,
        SendFlags::empty(),
    )?)
}

/// An interface's first IPv4 address and netmask (getifaddrs is not in rustix).
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
    addr: impl Into<SocketAddr>,
    interface: Option<&str>,
    broadcast: bool,
) -> io::Result<tokio::net::UdpSocket> {
    tokio::net::UdpSocket::from_std(bind_udp(addr, interface, broadcast, true)?)
}

/// A bound UDP socket, with options set before binding; blocking unless `nonblocking`. An
/// IPv6 socket is IPv6 only (IPV6_V6ONLY), so it shares its port number with an IPv4 one.
pub fn bind_udp(
    addr: impl Into<SocketAddr>,
    interface: Option<&str>,
    broadcast: bool,
    nonblocking: bool,
) -> io::Result<std::net::UdpSocket> {
    let addr = addr.into();
    let flags = if nonblocking {
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK
    } else {
        SocketFlags::CLOEXEC
    };
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let socket: OwnedFd = rustix::net::socket_with(family, SocketType::DGRAM, flags, None)?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&socket, true)?;
    }
    sockopt::set_socket_reuseaddr(&socket, true)?;
    if broadcast {
        sockopt::set_socket_broadcast(&socket, true)?;
    }
    if let Some(ifname) = interface {
        bind_to_device(&socket, ifname)?;
    }
    rustix::net::bind(&socket, &addr).map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}"))
    })?;
    Ok(std::net::UdpSocket::from(socket))
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
/// libc, not rustix: rustix's `SendAncillaryMessage` has no UDP_SEGMENT variant.
pub fn send_segmented(
    fd: impl AsFd,
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
        let sent = libc::sendmmsg(
            fd.as_fd().as_raw_fd(),
            msgs.as_mut_ptr(),
            message_count as libc::c_uint,
            0,
        );
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((sent as usize * per_message).min(count))
    }
}

/// Receives one datagram if one is queued; `None` when the socket is empty.
pub fn recv_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::net::recv(fd, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Ok(Some(n)),
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until `fd` is readable or `timeout` passes; true when readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    // Round up to whole milliseconds, as before with poll(2)'s millisecond timeout, so a
    // sub-millisecond remainder still waits instead of spinning.
    let ms = timeout.as_micros().div_ceil(1000).min(i64::MAX as u128) as i64;
    let timeout = Timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    };
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    match poll(&mut fds, Some(&timeout)) {
        Ok(ready) => Ok(ready > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// True when a send on `fd` would not block now (a zero-timeout poll).
pub fn writable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::OUT)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(ready) => Ok(ready > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The MTU of the route a connected socket sends on (IP_MTU).
pub fn path_mtu(fd: impl AsFd) -> io::Result<usize> {
    Ok(sockopt::ip_mtu(fd)? as usize)
}

/// The MTU of the route a connected IPv6 socket sends on (IPV6_MTU).
pub fn path_mtu6(fd: impl AsFd) -> io::Result<usize> {
    Ok(sockopt::ipv6_mtu(fd)? as usize)
}

/// An IPv6 UDP socket on `port` of every address, restricted to `interface` and joined to the
/// link-scoped multicast group `group` there (DHCPv6 clients send to ff02::1:2). IPv6 only
/// (IPV6_V6ONLY), so it never takes an IPv4 port.
pub fn udp6_multicast_socket(
    port: u16,
    interface: &str,
    group: std::net::Ipv6Addr,
) -> io::Result<tokio::net::UdpSocket> {
    let socket: OwnedFd = rustix::net::socket_with(
        AddressFamily::INET6,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_ipv6_v6only(&socket, true)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    bind_to_device(&socket, interface)?;
    let index = rustix::net::netdevice::name_to_index(&socket, interface).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("interface {interface}: {e}"),
        )
    })?;
    let addr = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, port, 0, 0);
    rustix::net::bind(&socket, &addr).map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("cannot bind UDP [::]:{port}: {e}"))
    })?;
    sockopt::set_ipv6_add_membership(&socket, &group, index).map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("cannot join {group} on {interface}: {e}"))
    })?;
    sockopt::set_ipv6_multicast_if(&socket, index)?;
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket))
}

/// An IPv6-only TCP listener (IPV6_V6ONLY: it shares its port number with an IPv4 listener).
pub fn tcp6_listener(addr: std::net::SocketAddrV6) -> io::Result<tokio::net::TcpListener> {
    let socket: OwnedFd = rustix::net::socket_with(
        AddressFamily::INET6,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_ipv6_v6only(&socket, true)?;
    sockopt::set_socket_reuseaddr(&socket, true)?;
    rustix::net::bind(&socket, &addr).map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("cannot bind TCP {addr}: {e}"))
    })?;
    rustix::net::listen(&socket, 1024)?;
    tokio::net::TcpListener::from_std(std::net::TcpListener::from(socket))
}

/// The address an interface is reached at over IPv6 for boot URLs: its first global or
/// unique-local address, else its link-local one (getifaddrs is not in rustix).
pub fn interface_ipv6(interface: &str) -> io::Result<std::net::Ipv6Addr> {
    let mut found: Vec<std::net::Ipv6Addr> = Vec::new();
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        check(libc::getifaddrs(&mut list))?;
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null()
                && (*ifa.ifa_addr).sa_family as libc::c_int == libc::AF_INET6
                && std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy() == interface
            {
                let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                found.push(std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
        .iter()
        .find(|a| !is_link_local6(a))
        .or(found.first())
        .copied()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("interface {interface} has no IPv6 address"),
            )
        })
}

/// An interface's hardware (MAC) address, from sysfs.
pub fn interface_mac(interface: &str) -> io::Result<[u8; 6]> {
    if interface.contains('/') || interface.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{interface:?} is not an interface name"),
        ));
    }
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    bytes.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("interface {interface} has no Ethernet address"),
        )
    })
}
