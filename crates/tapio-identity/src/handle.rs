//! O(1) cgroup id → directory lookup through kernfs file handles.
//!
//! Since Linux 5.5 a cgroup's 64-bit kernfs id is also its inode number and cgroupfs
//! decodes file handles of type `FILEID_KERNFS` whose 8 bytes are that id, so
//! `open_by_handle_at` finds the directory without scanning. It needs
//! `CAP_DAC_READ_SEARCH`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// `FILEID_KERNFS` from include/linux/exportfs.h.
const FILEID_KERNFS: libc::c_int = 0xfe;

/// `struct file_handle` with room for exactly the 8-byte kernfs id.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: libc::c_uint,
    handle_type: libc::c_int,
    f_handle: [u8; 8],
}

#[derive(Debug)]
pub(crate) enum HandleError {
    /// No directory with this id exists in the hierarchy (now).
    Gone,
    /// Handles cannot be used here (no privilege, filesystem or kernel without support,
    /// no /proc): use another way, permanently.
    Unsupported,
    /// Anything else, e.g. out of file descriptors: may work next time.
    Other,
}

/// The absolute path (in this process's mount namespace) of the directory with kernfs id
/// `id` in the filesystem that `mount_fd` belongs to.
pub(crate) fn path_by_id(mount_fd: BorrowedFd<'_>, id: u64) -> Result<PathBuf, HandleError> {
    let mut handle = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, f_handle: id.to_ne_bytes() };
    // O_PATH: we only need a name, not to read the directory. O_DIRECTORY: the id of a
    // cgroup control file must not pass for a cgroup.
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: `handle` is a live, properly laid out `struct file_handle` (a header followed
    // by `handle_bytes` bytes) for the duration of the call; the kernel only reads it.
    let fd = unsafe {
        libc::open_by_handle_at(mount_fd.as_raw_fd(), std::ptr::addr_of_mut!(handle).cast::<libc::file_handle>(), flags)
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ESTALE | libc::ENOENT | libc::ENOTDIR) => HandleError::Gone,
            Some(libc::EPERM | libc::EACCES | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                HandleError::Unsupported
            }
            _ => HandleError::Other,
        });
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|err| match err.raw_os_error() {
        Some(libc::ENOENT) => HandleError::Unsupported,
        _ => HandleError::Other,
    })
}
