//! The reader of an event ring (a `BPF_MAP_TYPE_RINGBUF` map).
//!
//! Written here instead of taking aya's `RingBuf`, for two costs that one pays on every node:
//! - aya publishes the consumer position after every record. A program reserving its next
//!   record reads that position first, so on a busy CPU each record fetched the position's
//!   cache line back from the drain's CPU. This reader publishes it once the records taken
//!   since fill a [`PUBLISH_SHARE`]th of the ring, and when it stops reading
//!   ([`RecordSource::publish`]).
//! - aya maps the data pages twice, as the kernel offers them (the second copy lets a record
//!   that wraps past the end be read in one piece), and a mapped page counts in the agent's
//!   RSS whether read or not: every ring counted twice. This reader maps the data once and
//!   copies the rare record that wraps into a buffer of its own.
//!
//! The layout is the kernel's (`kernel/bpf/ringbuf.c`, the same on every kernel since 5.8):
//! page 0 holds the consumer position (the one page user space may write), page 1 the
//! producer position, and the data pages follow. Each record starts with an 8-byte header
//! whose first word is its length and two flags (busy: not yet committed; discarded), and
//! takes its length plus the header, rounded up to 8 bytes.

use crate::drain::RecordSource;
use crate::observers::container::classify::PageSize;
use aya::maps::MapData;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HEADER_BYTES: usize = 8;
/// The consumer position is published once the records taken since fill this share of the
/// ring (a sixteenth: 16 KiB of a CPU's 256 KiB network ring, about 170 IPv4 connect
/// failures; 4 KiB of the 64 KiB DNS ring). A program re-reads the drain's line once per
/// that many of its records, and the room a ring has left lags what the drain has read by
/// at most that share of it.
pub const PUBLISH_SHARE: usize = 16;

/// One shared `mmap` of a map's pages (a ring's, or the storage observer's in-flight slots),
/// unmapped when dropped.
pub(crate) struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    pub(crate) fn new(fd: RawFd, len: usize, writable: bool, offset: usize) -> std::io::Result<Mapping> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        let offset =
            libc::off_t::try_from(offset).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks length and offset.
        let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, offset) };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { addr, len })
    }

    /// The mapping's first byte.
    pub(crate) fn addr(&self) -> *mut libc::c_void {
        self.addr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mapping::new` and nothing refers to it any more.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Where a ring's positions and data are, and the reader's own position in it.
struct Reader {
    consumer: *const AtomicUsize,
    producer: *const AtomicUsize,
    data: *const u8,
    /// The data area's size: a power of two.
    size: usize,
    /// The next record's position (the kernel's positions only grow; the offset into the data
    /// is the position modulo the size).
    pos: usize,
    /// The producer position last read: records up to it are committed or busy.
    producer_seen: usize,
    /// Bytes taken since the last publication, and how many trigger one.
    unpublished: usize,
    publish_at: usize,
    /// A record that wraps past the data's end, put back together.
    wrapped: Vec<u8>,
}

impl Reader {
    /// # Safety
    /// `consumer` and `producer` point to the ring's positions and `data` to `size` bytes of
    /// its data, all valid for the reader's life; `size` is a power of two.
    unsafe fn new(consumer: *const AtomicUsize, producer: *const AtomicUsize, data: *const u8, size: usize) -> Self {
        // SAFETY: valid, as the caller promises. The kernel's release of each position pairs
        // with these acquires.
        let (pos, producer_seen) =
            unsafe { ((*consumer).load(Ordering::Acquire), (*producer).load(Ordering::Acquire)) };
        let publish_at = size / PUBLISH_SHARE;
        Reader { consumer, producer, data, size, pos, producer_seen, unpublished: 0, publish_at, wrapped: Vec::new() }
    }

    /// Hands the next committed record to `f`; false when there is none (yet).
    fn take_one(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
        loop {
            if self.pos == self.producer_seen {
                // SAFETY: valid for the reader's life (`Reader::new`).
                self.producer_seen = unsafe { (*self.producer).load(Ordering::Acquire) };
                if self.pos == self.producer_seen {
                    return false;
                }
            }
            let offset = self.pos & (self.size - 1);
            // SAFETY: records are 8-aligned and the size is a multiple of 8, so the header
            // lies inside the data. The kernel commits a record by clearing its busy bit with
            // a fully ordered exchange; the acquire makes the record's bytes visible.
            let header = unsafe { (*self.data.add(offset).cast::<AtomicU32>()).load(Ordering::Acquire) };
            if header & BUSY_BIT != 0 {
                return false;
            }
            let len = (header & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if len > self.size - HEADER_BYTES {
                // Not a record the kernel could have written: nothing after it can be found
                // either. Skip to the producer and hand over an empty record, which the
                // classifier counts as malformed.
                let skipped = self.producer_seen.wrapping_sub(self.pos);
                self.pos = self.producer_seen;
                self.count_taken(skipped);
                f(&[]);
                return true;
            }
            let start = offset + HEADER_BYTES;
            let committed = header & DISCARD_BIT == 0;
            if committed {
                let first = len.min(self.size - start);
                // SAFETY: start + first <= size, and the rest (len - first < size) is at the
                // data's start; the bytes are the committed record's.
                let head = unsafe { std::slice::from_raw_parts(self.data.add(start), first) };
                if first == len {
                    f(head);
                } else {
                    self.wrapped.clear();
                    self.wrapped.extend_from_slice(head);
                    // SAFETY: as above.
                    self.wrapped.extend_from_slice(unsafe { std::slice::from_raw_parts(self.data, len - first) });
                    f(&self.wrapped);
                }
            }
            let occupied = (len + HEADER_BYTES + 7) & !7;
            self.pos = self.pos.wrapping_add(occupied);
            self.count_taken(occupied);
            if committed {
                return true;
            }
        }
    }

    fn count_taken(&mut self, bytes: usize) {
        self.unpublished += bytes;
        if self.unpublished >= self.publish_at {
            self.publish();
        }
    }

    /// Gives the records taken so far back to the kernel.
    fn publish(&mut self) {
        if self.unpublished > 0 {
            // SAFETY: valid for the reader's life. Release: the records' bytes were read
            // before the kernel may reuse their room, which it does after an acquire of this.
            unsafe { (*self.consumer).store(self.pos, Ordering::Release) };
            self.unpublished = 0;
        }
    }
}

/// An event ring, mapped for reading.
pub struct Ring {
    reader: Reader,
    // Declared after the reader, which points into them: dropped after it.
    _consumer_page: Mapping,
    _producer_and_data: Mapping,
    map: MapData,
}

// SAFETY: the reader's pointers are into the mappings the ring owns, and are used only
// through `&mut self`; nothing else refers to them.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps `map`, a ring buffer whose data area is `size` bytes.
    pub fn new(map: MapData, size: u32) -> std::io::Result<Ring> {
        let size = size as usize;
        let page = usize::try_from(PageSize::of_this_system().0).unwrap_or(4096);
        if !size.is_power_of_two() || size < page {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a ring of {size} bytes (the kernel makes them a power of two of at least a page)"),
            ));
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer_page = Mapping::new(fd, page, true, 0)?;
        // The producer's page and one copy of the data.
        let producer_and_data = Mapping::new(fd, page + size, false, page)?;
        let producer = producer_and_data.addr.cast::<AtomicUsize>();
        // SAFETY: the data starts a page into the second mapping, which holds `size` bytes
        // of it; both mappings live as long as the reader (fields of the same ring).
        let reader = unsafe {
            Reader::new(
                consumer_page.addr.cast::<AtomicUsize>(),
                producer,
                producer_and_data.addr.cast::<u8>().add(page),
                size,
            )
        };
        Ok(Ring { reader, _consumer_page: consumer_page, _producer_and_data: producer_and_data, map })
    }
}

/// Once the records taken fill a [`PUBLISH_SHARE`]th of the ring, their room is given back
/// to the kernel; `publish` gives back the rest, whenever the drain stops reading (else a
/// program would see the ring fuller than it is, and the drain's epoll would find it still
/// readable).
impl RecordSource for Ring {
    fn take_one(&mut self, f: &mut dyn FnMut(&[u8])) -> bool {
        self.reader.take_one(f)
    }

    fn publish(&mut self) {
        self.reader.publish()
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in ordinary memory, written the way the kernel writes one. Its bytes are only
    /// ever reached through `bytes`, by the test and the reader alike.
    struct FakeRing {
        consumer: Box<AtomicUsize>,
        producer: Box<AtomicUsize>,
        _buffer: Vec<u64>,
        bytes: *mut u8,
        size: usize,
    }

    impl FakeRing {
        fn new(size: usize) -> Self {
            let mut buffer = vec![0u64; size / 8];
            let bytes = buffer.as_mut_ptr().cast::<u8>();
            FakeRing {
                consumer: Box::new(AtomicUsize::new(0)),
                producer: Box::new(AtomicUsize::new(0)),
                _buffer: buffer,
                bytes,
                size,
            }
        }

        fn reader(&self) -> Reader {
            // SAFETY: the fake ring outlives every reader the tests make from it.
            unsafe { Reader::new(&*self.consumer, &*self.producer, self.bytes, self.size) }
        }

        fn write(&mut self, pos: usize, bytes: impl IntoIterator<Item = u8>) {
            for (i, b) in bytes.into_iter().enumerate() {
                // SAFETY: the index is reduced modulo the buffer's size.
                unsafe { *self.bytes.add((pos + i) & (self.size - 1)) = b };
            }
        }

        /// Appends a record at the producer position; `flags` are the header's two bits.
        fn push(&mut self, body: &[u8], flags: u32) {
            let pos = self.producer.load(Ordering::Relaxed);
            let header = (body.len() as u32) | flags;
            self.write(pos, header.to_le_bytes().into_iter().chain([0; 4]).chain(body.iter().copied()));
            self.producer.store(pos + ((body.len() + HEADER_BYTES + 7) & !7), Ordering::Release);
        }

        fn taken(&self, reader: &mut Reader) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            while reader.take_one(&mut |r| out.push(r.to_vec())) {}
            out
        }
    }

    #[test]
    fn records_come_in_order_and_discarded_ones_are_skipped() {
        let mut ring = FakeRing::new(4096);
        let mut reader = ring.reader();
        ring.push(b"first", 0);
        ring.push(b"dropped by its program", DISCARD_BIT);
        ring.push(&[7; 88], 0);
        assert_eq!(ring.taken(&mut reader), vec![b"first".to_vec(), vec![7; 88]]);
        assert!(!reader.take_one(&mut |_| panic!("nothing more")));
    }

    #[test]
    fn a_record_not_yet_committed_stops_the_reader_until_it_is() {
        let mut ring = FakeRing::new(4096);
        let mut reader = ring.reader();
        ring.push(b"reserved", BUSY_BIT);
        ring.push(b"behind it", 0);
        assert!(ring.taken(&mut reader).is_empty(), "nothing passes a busy record");
        // The kernel commits it: its busy bit is cleared.
        ring.write(0, (b"reserved".len() as u32).to_le_bytes());
        assert_eq!(ring.taken(&mut reader), vec![b"reserved".to_vec(), b"behind it".to_vec()]);
    }

    #[test]
    fn a_record_that_wraps_past_the_end_comes_whole() {
        let mut ring = FakeRing::new(4096);
        let mut reader = ring.reader();
        // 42 records of 96 bytes (88 and the header) read: the next one starts 64 bytes
        // before the end and crosses it.
        for _ in 0..42 {
            ring.push(&[1; 88], 0);
        }
        assert_eq!(ring.taken(&mut reader).len(), 42);
        let body: Vec<u8> = (0..200u8).collect();
        ring.push(&body, 0);
        assert_eq!(ring.taken(&mut reader), vec![body]);
        assert_eq!(reader.pos, ring.producer.load(Ordering::Relaxed));
    }

    #[test]
    fn the_consumer_position_is_published_once_a_sixteenth_of_the_ring_is_taken_and_when_asked() {
        // 4,096 bytes: a sixteenth is 256 bytes, sixteen records of 16 (8 of header, 8 of body).
        let mut ring = FakeRing::new(4096);
        let mut reader = ring.reader();
        for i in 0..20u64 {
            ring.push(&i.to_le_bytes(), 0);
        }
        let mut got = 0;
        for _ in 0..15 {
            assert!(reader.take_one(&mut |_| got += 1));
        }
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 0, "not yet");
        assert!(reader.take_one(&mut |_| got += 1));
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 256, "a sixteenth of the ring, published");
        assert!(reader.take_one(&mut |_| got += 1));
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 256);
        reader.publish();
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 272);
        assert_eq!(got, 17);
    }

    #[test]
    fn a_length_no_kernel_writes_is_one_malformed_record_and_the_reader_goes_on_after_it() {
        let mut ring = FakeRing::new(4096);
        let mut reader = ring.reader();
        ring.push(b"fine", 0);
        // A header claiming more than the whole ring, then the producer moved past it.
        let pos = ring.producer.load(Ordering::Relaxed);
        ring.write(pos, 0x3fff_ffffu32.to_le_bytes());
        ring.producer.store(pos + 64, Ordering::Release);
        assert_eq!(ring.taken(&mut reader), vec![b"fine".to_vec(), Vec::new()]);
        ring.push(b"next", 0);
        assert_eq!(ring.taken(&mut reader), vec![b"next".to_vec()]);
    }
}
