//! Bytes from one socket to another without copying them into the
//! process: Linux `splice(2)` through a pipe.
//!
//! Each worker thread has one pipe, shared by every relay on it and
//! borrowed only for one synchronous step: fill it from the origin, drain
//! it into the player's socket, and read out into the relay's own buffer
//! whatever that socket did not take (a copy, only while the player lags).
//! So the pipe is empty between steps and holds no relay's bytes for
//! longer than a step. A pipe left in doubt by an error is closed and the
//! next step makes a new one.
//!
//! Where the kernel refuses `splice` on these sockets (`EINVAL`, `ENOSYS`,
//! `EPERM`: some sandboxes), [`disable`] turns it off for the process and
//! relays go back to reading and writing.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use rustix::pipe::{fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};

/// Set once the kernel has refused `splice` for a relay's sockets.
static REFUSED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
}

/// This thread's pipe.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// Bytes may be left in it: it is closed after the step.
    broken: Cell<bool>,
}

/// Runs one step with this thread's pipe, made on first use with room for
/// `size` bytes if the system allows (the default 64 KiB otherwise).
/// `None`: splicing is off for this process, or no pipe could be made
/// (out of descriptors); the caller copies instead.
pub fn with<R>(size: usize, step: impl FnOnce(&Pipe) -> R) -> Option<R> {
    if REFUSED.load(Ordering::Relaxed) {
        return None;
    }
    PIPE.with_borrow_mut(|slot| {
        if slot.is_none() {
            match Pipe::open(size) {
                Ok(pipe) => *slot = Some(pipe),
                Err(e) => {
                    tracing::debug!(error = %e, "no pipe for splicing; copying");
                    return None;
                }
            }
        }
        let pipe = slot.as_ref()?;
        let result = step(pipe);
        if pipe.broken.get() {
            *slot = None;
        }
        Some(result)
    })
}

/// Whether an error from [`Pipe::fill`] means this kernel or sandbox does
/// not splice these sockets at all (nothing was moved).
pub fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::INVAL.raw_os_error()
            || code == rustix::io::Errno::NOSYS.raw_os_error()
            || code == rustix::io::Errno::PERM.raw_os_error()
    )
}

/// Turns splicing off for the rest of the process's life.
pub fn disable(e: &io::Error) {
    if !REFUSED.swap(true, Ordering::Relaxed) {
        tracing::warn!(error = %e, "the kernel refuses splice(2) for relays; copying bytes instead");
    }
}

impl Pipe {
    fn open(size: usize) -> io::Result<Pipe> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Over /proc/sys/fs/pipe-max-size the kernel refuses; the default
        // size then stays.
        let _ = fcntl_setpipe_size(&write, size);
        let capacity = fcntl_getpipe_size(&write)?;
        Ok(Pipe {
            read,
            write,
            capacity,
            broken: Cell::new(false),
        })
    }

    /// Most bytes one step moves.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Moves up to `len` bytes from the non-blocking socket `from` into the
    /// (empty) pipe; 0 when the peer has closed. `WouldBlock` when the
    /// socket has nothing.
    pub fn fill(&self, from: impl AsFd, len: usize) -> io::Result<usize> {
        Ok(splice(
            from,
            None,
            &self.write,
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        )?)
    }

    /// Moves up to `len` of the pipe's bytes into the non-blocking socket
    /// `to`. On an error the pipe's bytes are dropped.
    pub fn drain(&self, to: impl AsFd, len: usize) -> io::Result<usize> {
        let moved = splice(
            &self.read,
            None,
            to,
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        );
        match moved {
            Ok(n) => Ok(n),
            Err(e) => {
                let e = io::Error::from(e);
                if e.kind() != io::ErrorKind::WouldBlock {
                    self.broken.set(true);
                }
                Err(e)
            }
        }
    }

    /// Appends the `len` bytes left in the pipe to `buf`, leaving it empty.
    pub fn read_out(&self, buf: &mut BytesMut, len: usize) -> io::Result<()> {
        let start = buf.len();
        buf.resize(start + len, 0);
        let mut filled = start;
        while filled < start + len {
            match rustix::io::read(&self.read, &mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    buf.truncate(filled);
                    self.broken.set(true);
                    return Err(e.into());
                }
            }
        }
        if filled < start + len {
            buf.truncate(filled);
            self.broken.set(true);
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the pipe held fewer bytes than were moved into it",
            ));
        }
        Ok(())
    }
}
