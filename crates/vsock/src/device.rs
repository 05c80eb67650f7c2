//! The vhost-user side: the device QEMU sees (features, config space, queues) and the moving
//! of packets between its virtqueues and the muxer.

use crate::muxer::{Fill, Muxer};
use crate::packet::read_packet;
use std::io;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringState, VringT};
use virtio_bindings::bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const EVENT_QUEUE: u16 = 2;
const NUM_QUEUES: usize = 3;
/// The muxer's epoll fd, as registered with the daemon: above the queues and the exit event.
pub const BACKEND_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// QEMU's vhost-user-vsock uses 128; allow more.
const MAX_QUEUE_SIZE: usize = 1024;

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

#[derive(Debug)]
pub struct VsockDevice {
    guest_cid: u64,
    muxer: Muxer,
    mem: Option<Memory>,
    event_idx: bool,
    payload: Vec<u8>,
    /// Written when QEMU disconnects: ends the worker thread, so the daemon can be dropped
    /// (it joins its workers) and the process exit.
    exit: EventFd,
}

impl VsockDevice {
    pub fn new(guest_cid: u64, muxer: Muxer) -> std::io::Result<VsockDevice> {
        Ok(VsockDevice {
            guest_cid,
            muxer,
            mem: None,
            event_idx: false,
            payload: Vec::new(),
            exit: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn muxer_fd(&self) -> i32 {
        self.muxer.epoll_fd()
    }

    /// Takes every packet the guest queued for us. Never waits: bytes the host cannot take
    /// yet stay in their connection's buffer, which credit bounds.
    fn process_tx(&mut self, vring: &VringRwLock) {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else { return };
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return;
        }
        let mut used = false;
        loop {
            if self.event_idx {
                let _ = state.disable_notification();
            }
            while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) {
                let head = chain.head_index();
                match chain.reader(&mem) {
                    Ok(mut reader) => {
                        let available = reader.available_bytes();
                        match read_packet(&mut reader, available, &mut self.payload) {
                            Ok(header) => {
                                let payload = std::mem::take(&mut self.payload);
                                self.muxer.guest_packet(&header, &payload);
                                self.payload = payload;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "dropping a malformed guest packet")
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "dropping an unreadable TX chain"),
                }
                if let Err(e) = state.add_used(head, 0) {
                    tracing::warn!(error = %e, "returning a TX chain");
                }
                used = true;
            }
            if !self.event_idx || !matches!(state.enable_notification(), Ok(true)) {
                break;
            }
        }
        if used {
            signal(&mut state);
        }
    }

    /// Fills guest RX buffers with what is owed to the guest, while both last.
    fn process_rx(&mut self, vring: &VringRwLock) {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else { return };
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            return;
        }
        let mut used = false;
        loop {
            if self.event_idx {
                let _ = state.disable_notification();
            }
            while self.muxer.has_work() {
                let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                    break;
                };
                let head = chain.head_index();
                let len = match chain.writer(&mem) {
                    Ok(mut writer) => {
                        let room = writer.available_bytes();
                        match self.muxer.fill_rx(&mut writer, room) {
                            Fill::Packet(len) => len,
                            Fill::Unusable => {
                                tracing::warn!(room, "guest RX buffer too small for a packet");
                                0
                            }
                            Fill::Nothing => {
                                state.get_queue_mut().go_to_previous_position();
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "unusable RX chain");
                        0
                    }
                };
                if let Err(e) = state.add_used(head, len) {
                    tracing::warn!(error = %e, "returning an RX chain");
                }
                used = true;
            }
            if !self.event_idx {
                break;
            }
            // Re-arm the guest's kick, then look again: buffers added in between would
            // otherwise wait for the next kick.
            if !matches!(state.enable_notification(), Ok(true)) || !self.muxer.has_work() {
                break;
            }
        }
        if used {
            signal(&mut state);
        }
    }
}

fn signal(state: &mut VringState<Memory>) {
    match state.needs_notification() {
        Ok(false) => {}
        _ => {
            if let Err(e) = state.signal_used_queue() {
                tracing::warn!(error = %e, "signalling the guest");
            }
        }
    }
}

impl VhostUserBackendMut for VsockDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        self.muxer.reset_all();
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// Config space: `le64 guest_cid`.
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.guest_cid.to_le_bytes();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= config.len() => config[start..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn exit_event(&self, _thread_index: usize) -> Option<EventFd> {
        self.exit.try_clone().ok()
    }

    fn update_memory(&mut self, mem: Memory) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // An error here would end the worker thread (and the VM's vsock): log, never return one.
        let (Some(rx), Some(tx)) = (vrings.get(RX_QUEUE as usize), vrings.get(TX_QUEUE as usize))
        else {
            return Ok(());
        };
        match device_event {
            RX_QUEUE | EVENT_QUEUE => {}
            TX_QUEUE => self.process_tx(tx),
            BACKEND_EVENT => self.muxer.process_host_events(),
            other => tracing::warn!(event = other, "unknown device event"),
        }
        self.process_rx(rx);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_the_cid_and_bounds_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let muxer = Muxer::new(3, &dir.path().join("v.sock")).unwrap();
        let dev = VsockDevice::new(3, muxer).unwrap();
        assert_eq!(dev.get_config(0, 8), 3u64.to_le_bytes().to_vec());
        assert_eq!(dev.get_config(4, 4), vec![0, 0, 0, 0]);
        assert!(dev.get_config(4, 8).is_empty());
        assert!(dev.get_config(u32::MAX, u32::MAX).is_empty());
    }
}

#[cfg(test)]
mod chain_tests {
    use crate::packet::{read_packet, Header, OP_RW, TYPE_STREAM};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Linux 6.12 scatters payloads over several descriptors; the header may be split too.
    #[test]
    fn reads_a_packet_split_over_many_descriptors() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
        let queue = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let header = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 4000,
            dst_port: 1024,
            len: payload.len() as u32,
            kind: TYPE_STREAM,
            op: OP_RW,
            buf_alloc: 262_144,
            ..Header::default()
        };
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(&payload);
        // Pieces: header over two descriptors, the payload over four of odd sizes.
        let sizes = [10usize, 34, 1, 4096, 20_000, 40_000 - 1 - 4096 - 20_000];
        let mut descs = Vec::new();
        let (mut at, mut addr) = (0usize, 0x10000u64);
        for size in sizes {
            mem.write_slice(&bytes[at..at + size], GuestAddress(addr)).unwrap();
            descs.push(RawDescriptor::from(Descriptor::new(addr, size as u32, 0, 0)));
            at += size;
            addr += size as u64 + 64;
        }
        let chain = queue.build_desc_chain(&descs).unwrap();
        let mut reader = chain.reader(&mem).unwrap();
        let available = reader.available_bytes();
        let mut got = Vec::new();
        assert_eq!(read_packet(&mut reader, available, &mut got).unwrap(), header);
        assert_eq!(got, payload);
    }
}
