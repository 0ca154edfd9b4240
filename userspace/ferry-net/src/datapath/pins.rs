//! The pin directory and the bpf(2) commands aya does not wrap: stale
//! program pins, pinned maps of another layout, key counts, link updates.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use tracing::info;

use super::{DatapathError, MAPS, OBJECT, PROGRAMS, SOCK_PROGRAMS};

/// `bpf(2)` with a command and its attribute struct.
pub(super) fn bpf_cmd<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised struct of the size passed, laid
    // out as the kernel's `union bpf_attr` member for `cmd`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Every key and value of a hash map, read with BPF_MAP_LOOKUP_BATCH: a
/// few bpf(2) calls for the whole map, where walking it key by key takes
/// two per entry (the conntrack GC's pass over 32,768 entries went from
/// 150 to 70 ms). The batch follows the map's buckets, so entries inserted
/// or removed meanwhile may or may not be seen, as with a walk. `None`
/// when the kernel refuses batches for this map.
pub(crate) fn lookup_batch<K: Copy + Default, V: Copy + Default>(
    map: BorrowedFd<'_>,
) -> io::Result<Option<Vec<(K, V)>>> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    /// The kernel's "operation not supported" for a map type.
    const ENOTSUPP: i32 = 524;
    /// The kernel's `union bpf_attr` member for the batch commands.
    #[repr(C)]
    struct Batch {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    // A bucket's entries come whole; one with more than this many would
    // be ENOSPC (a hash map's buckets hold a handful).
    const CHUNK: usize = 4096;
    let mut keys = vec![K::default(); CHUNK];
    let mut values = vec![V::default(); CHUNK];
    // The batch position: a bucket index for hash maps.
    let (mut token, mut next) = ([0u64; 2], [0u64; 2]);
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let mut attr = Batch {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` points at buffers of `count` keys and values of
        // the map's sizes (the caller's types) and at a batch position of
        // 16 bytes; the kernel writes them and `attr.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut Batch,
                size_of::<Batch>() as libc::c_uint,
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        let got = (attr.count as usize).min(CHUNK);
        out.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        match err {
            None => {}
            // The end of the map.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Some(out)),
            Some(e)
                if first
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)
                    ) =>
            {
                return Ok(None);
            }
            Some(e) => return Err(e),
        }
        token = next;
        first = false;
    }
}

/// Removes pins an earlier ferry left under names this one no longer uses:
/// maps, programs and socket-hook links (a stale link pin would keep its
/// old program attached next to the new one).
pub(super) fn remove_stale_pins(pin_dir: &Path) {
    let stale = |dir: &str, keep: &dyn Fn(&str) -> bool| {
        let Ok(entries) = std::fs::read_dir(pin_dir.join(dir)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep(&name) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => info!(pin = %entry.path().display(), "removed a stale pin"),
                Err(e) => {
                    tracing::warn!(pin = %entry.path().display(), %e, "cannot remove a stale pin")
                }
            }
        }
    };
    stale("", &|name| {
        MAPS.contains(&name) || name == "progs" || name == "links"
    });
    stale("progs", &|name| PROGRAMS.contains(&name));
    stale("links", &|name| {
        !name.starts_with("sock_") || SOCK_PROGRAMS.contains(&name)
    });
}

/// Removes the pins of maps whose layout (type, key or value size, flags,
/// an array's length) differs from this build's definition, so that they
/// are made anew: the loader would otherwise reuse an old map as it is,
/// and the programs would read its values with the new layout. What such a map held is
/// lost (ferryd puts its endpoints and ports back as it adopts the
/// containers; counters restart, tracked flows are forgotten); each one is
/// logged. A hash map's capacity is not layout: a pinned one keeps its own.
pub(super) fn remove_changed_maps(pin_dir: &Path) -> Result<(), DatapathError> {
    let object = aya_obj::Object::parse(OBJECT)
        .map_err(|e| DatapathError::Load(Box::new(aya::EbpfError::ParseError(e))))?;
    for name in MAPS {
        let path = pin_dir.join(name);
        let Ok(pinned) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let Some(wanted) = object.maps.get(name) else {
            continue;
        };
        // An array's capacity is its layout: its indexes are fixed slots.
        let is_array = |t: u32| {
            t == aya::maps::MapType::Array as u32 || t == aya::maps::MapType::PerCpuArray as u32
        };
        let pinned_type = pinned.map_type().ok().map(|t| t as u32);
        let pinned_layout = (
            pinned_type,
            pinned.key_size(),
            pinned.value_size(),
            pinned.map_flags(),
            pinned_type
                .is_some_and(is_array)
                .then(|| pinned.max_entries()),
        );
        let wanted_layout = (
            Some(wanted.map_type()),
            wanted.key_size(),
            wanted.value_size(),
            wanted.map_flags(),
            is_array(wanted.map_type()).then(|| wanted.max_entries()),
        );
        if pinned_layout == wanted_layout {
            continue;
        }
        tracing::warn!(
            map = name,
            pinned = ?pinned_layout,
            wanted = ?wanted_layout,
            "a pinned map has another layout (type, key size, value size, flags, array \
             length) than this build's: made anew, its entries are lost"
        );
        std::fs::remove_file(&path).map_err(|e| DatapathError::Pin {
            what: name,
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

/// Counts a map's keys with BPF_MAP_GET_NEXT_KEY (at most `capacity` + 1
/// steps, however the map changes meanwhile).
pub(super) fn count_keys(map: BorrowedFd<'_>, key_size: u32, capacity: u32) -> io::Result<usize> {
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    #[repr(C)]
    struct NextKey {
        map_fd: u32,
        pad: u32,
        key: u64,
        next_key: u64,
    }
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut count = 0;
    let mut first = true;
    while count <= capacity as usize {
        let attr = NextKey {
            map_fd: map.as_raw_fd() as u32,
            pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        match bpf_cmd(BPF_MAP_GET_NEXT_KEY, &attr) {
            Ok(_) => {
                count += 1;
                first = false;
                std::mem::swap(&mut key, &mut next);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(count)
}

/// Atomically swaps the program of the BPF link pinned at `pin` for
/// `prog` (BPF_OBJ_GET + BPF_LINK_UPDATE): a restarted ferryd takes over
/// its attachments without a moment where nothing is attached.
pub(super) fn update_pinned_link(pin: &Path, prog: BorrowedFd<'_>) -> io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_UPDATE: libc::c_long = 29;
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fd = bpf_cmd(
        BPF_OBJ_GET,
        &ObjGet {
            pathname: path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        },
    )?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    bpf_cmd(
        BPF_LINK_UPDATE,
        &LinkUpdate {
            link_fd: link.as_raw_fd() as u32,
            new_prog_fd: prog.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        },
    )
    .map(|_| ())
}
