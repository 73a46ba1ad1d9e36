//! The strict checks: every requirement of the virtio specification on a
//! driver that a device can observe, one variant per rule, each with its
//! level, the sections of virtio 1.2 and 1.0 it rests on and the sentence
//! it quotes.
//!
//! Transport, queue and device code report a [`Violation`] naming the rule.
//! What follows depends on the rule's [`Level`]: a broken MUST stops the
//! guest with a "bad driver" report (or, with `--lenient`, is logged and
//! sets DEVICE_NEEDS_RESET); anything else is a warning, printed once per
//! rule and device, and the device carries on. `docs/strict-checks.md` is
//! checked against [`Rule::ALL`] by a test, so the list cannot drift.

use std::fmt;

/// How binding a rule is, and so what breaking it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A driver MUST or MUST NOT of the specification: a bad driver.
    Must,
    /// A driver SHOULD or SHOULD NOT: a warning.
    Should,
    /// What this device cannot or will not do, or a structural consequence
    /// of the spec with no driver requirement behind it: a warning.
    Limit,
    /// What the legacy interface tolerates, or a guess from what the device
    /// sees: a warning.
    Heuristic,
    /// A request or ring the device cannot carry out at all (outside guest
    /// RAM, a header too short to parse) where no MUST names the mistake:
    /// it stops the guest like a MUST, labelled as what it is.
    Malformed,
}

impl Level {
    /// Whether breaking it stops the guest (in strict mode).
    pub fn is_fatal(self) -> bool {
        matches!(self, Level::Must | Level::Malformed)
    }

    /// How reports and the docs name the level.
    pub fn name(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::Limit => "device limit",
            Level::Heuristic => "heuristic",
            Level::Malformed => "malformed",
        }
    }
}

macro_rules! rules {
    ($( $(#[$doc:meta])* $name:ident => ($level:ident, $s12:literal, $s10:literal, $text:literal, $quote:literal), )*) => {
        /// One requirement of the virtio specification a driver can break.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rule { $( $(#[$doc])* $name, )* }

        impl Rule {
            /// Every rule, in table order.
            pub const ALL: &'static [Rule] = &[ $( Rule::$name, )* ];

            pub fn level(self) -> Level {
                match self { $( Rule::$name => Level::$level, )* }
            }

            /// The virtio 1.2 section the rule rests on ("" for none).
            pub fn section(self) -> &'static str {
                match self { $( Rule::$name => $s12, )* }
            }

            /// The virtio 1.0 section ("" where 1.0 has no such text).
            pub fn section_1_0(self) -> &'static str {
                match self { $( Rule::$name => $s10, )* }
            }

            /// One line saying what the driver must (not) do.
            pub fn text(self) -> &'static str {
                match self { $( Rule::$name => $text, )* }
            }

            /// The specification's own sentence, for the docs.
            pub fn quote(self) -> &'static str {
                match self { $( Rule::$name => $quote, )* }
            }
        }
    };
}

rules! {
    // Device status and negotiation
    StatusOrder => (Must, "3.1.1", "3.1.1", "status bits must be set in order: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK", "The driver MUST follow this sequence to initialize a device: 1. Reset the device. 2. Set the ACKNOWLEDGE status bit [...] 3. Set the DRIVER status bit [...] 5. Set the FEATURES_OK status bit. [...] 8. Set the DRIVER_OK status bit."),
    StatusClearedBit => (Must, "2.1.1", "2.1.1", "the driver must not clear a device status bit (only writing 0 resets)", "The driver MUST NOT clear a device status bit."),
    StatusFailedThenMore => (Must, "2.1.1", "2.1.1", "after setting FAILED the driver must reset before going on", "If the driver sets the FAILED bit, the driver MUST later reset the device before attempting to re-initialize."),
    ResetNotConfirmed => (Must, "4.1.4.3.2", "4.1.4.3.2", "after writing 0 to device_status the driver must read it back as 0 before re-initialising", "After writing 0 to device_status, the driver MUST wait for a read of device_status to return 0 before reinitializing the device."),
    FeaturesOkNotReread => (Must, "3.1.1", "3.1.1", "after setting FEATURES_OK the driver must re-read the status to see that it stuck", "The driver MUST follow this sequence to initialize a device: [...] 6. Re-read device status to ensure the FEATURES_OK bit is still set: otherwise, the device does not support our subset of features and the device is unusable."),
    FeaturesOkRefused => (Must, "3.1.1", "3.1.1", "the driver must not go on after the device refused FEATURES_OK", "6. Re-read device status to ensure the FEATURES_OK bit is still set: otherwise, [...] the device is unusable. [...] If any of these steps go irrecoverably wrong, [...] The driver MUST NOT continue initialization in that case."),
    FeatureNotOffered => (Must, "2.2.1", "2.2.1", "the driver must not accept a feature the device did not offer", "The driver MUST NOT accept a feature which the device did not offer, [...]"),
    FeatureMissingPrerequisite => (Must, "2.2.1", "2.2.1", "the driver must not accept a feature without the features it depends on", "The driver [...] MUST NOT accept a feature which requires another feature which was not accepted. (5.1.3.1: \"VIRTIO_NET_F_HOST_TSO4 Requires VIRTIO_NET_F_CSUM.\" [...])"),
    FeatureBeforeDriver => (Must, "3.1.1", "3.1.1", "the driver writes its features after setting DRIVER, not before", "The driver MUST follow this sequence [...] 3. Set the DRIVER status bit: the guest OS knows how to drive the device. 4. Read device feature bits, and write the subset of feature bits understood by the OS and driver to the device."),
    FeatureAfterFeaturesOk => (Must, "3.1.1", "3.1.1", "the driver must not change features after FEATURES_OK", "5. Set the FEATURES_OK status bit. The driver MUST NOT accept new feature bits after this step."),
    FeatureVersion1Missing => (Must, "6.1", "6.1", "a modern driver must accept VIRTIO_F_VERSION_1", "A driver MUST accept VIRTIO_F_VERSION_1 if it is offered."),
    LegacyFeatureAfterDriverOk => (Heuristic, "3.1.2", "3.1.2", "a legacy driver should not change its features once the device runs", "They also did not provide a clear mechanism to end feature negotiation, which meant that devices finalized features on first-use, and no features could be introduced which radically changed the initial operation of the device."),
    // Queue setup (modern PCI)
    QueueSetupBeforeFeaturesOk => (Must, "3.1.1", "3.1.1", "queue size, addresses and enable are set after FEATURES_OK", "5. Set the FEATURES_OK status bit. [...] 6. Re-read device status [...] 7. Perform device-specific setup, including discovery of virtqueues for the device, optional per-bus setup, reading and possibly writing the device's virtio configuration space, and population of virtqueues."),
    QueueSetupAfterDriverOk => (Must, "3.1.1", "3.1.1", "queue size, addresses and enable are set before DRIVER_OK (the initialisation sequence)", "7. Perform device-specific setup, including discovery of virtqueues for the device, [...] and population of virtqueues. 8. Set the DRIVER_OK status bit. At this point the device is \"live\". / The driver MUST configure the other virtqueue fields before enabling the virtqueue with queue_enable."),
    QueueSizeInvalid => (Must, "4.1.4.3.2", "4.1.4.3.2", "queue size must be a power of two no larger than the device's maximum", "If VIRTIO_F_RING_PACKED has not been negotiated, the driver MUST NOT write a value which is not a power of 2 to queue_size. (4.1.4.3, queue_size: \"On reset, specifies the maximum queue size supported by the device. This can be modified by the driver to reduce memory requirements.\")"),
    QueueAddressAlignment => (Must, "2.7.1", "2.4.1", "descriptor table 16-, available ring 2-, used ring 4-byte aligned", "The driver MUST ensure that the physical address of the first byte of each virtqueue part is a multiple of the specified alignment value in the above table. (table: Descriptor Table 16, Available Ring 2, Used Ring 4)"),
    QueueAddressOutsideMemory => (Malformed, "6.1", "", "the virtqueue's rings must lie in guest RAM", "If VIRTIO_F_ACCESS_PLATFORM is not offered, then a driver MUST pass only physical addresses to the device."),
    QueueEnableValue => (Must, "4.1.4.3.2", "4.1.4.3.2", "the driver must write 1 to queue_enable, never 0", "The driver MUST NOT write a 0 to queue_enable."),
    QueueEnabledIncomplete => (Must, "4.1.4.3.2", "4.1.4.3.2", "a queue must be fully configured before it is enabled", "The driver MUST configure the other virtqueue fields before enabling the virtqueue with queue_enable."),
    QueueSelectOutOfRange => (Limit, "4.1.4.3.1", "4.1.4.3.1", "queue_select must name an existing queue when its fields are used", "The device MUST present a 0 in queue_size if the virtqueue corresponding to the current queue_select is unavailable."),
    MsixVectorInvalid => (Must, "4.1.5.1.2.2", "4.1.5.1.2.2", "an MSI-X vector must be one the function has, or NO_VECTOR", "Driver MUST NOT attempt to map an event to a vector outside the MSI-X Table supported by the device, as reported by Table Size in the MSI-X Capability."),
    MsixVectorNotReadBack => (Must, "4.1.5.1.2.2", "4.1.5.1.2.2", "after mapping an event to an MSI-X vector the driver must read the vector back to verify it", "After mapping an event to vector, the driver MUST verify success by reading the Vector field value: on success, the previously written value is returned, and on failure, NO_VECTOR is returned."),
    UsedFlagsNotZero => (Must, "2.7.10.1", "2.4.9.1", "the driver must initialise the used ring's flags to 0", "The driver MUST initialize flags in the used ring to 0 when allocating the used ring."),
    // Register access (PCI)
    AccessWidth => (Must, "4.1.3.1", "4.1.3.1", "common configuration fields must be accessed with their own width", "For device configuration access, the driver MUST use 8-bit wide accesses for 8-bit wide fields, 16-bit wide and aligned accesses for 16-bit wide fields and 32-bit wide and aligned accesses for 32-bit and 64-bit wide fields."),
    ConfigAccessWidth => (Must, "4.1.3.1", "4.1.3.1", "device configuration fields are accessed at their natural width and alignment (64-bit fields as 32-bit halves)", "For device configuration access, the driver MUST use 8-bit wide accesses for 8-bit wide fields, 16-bit wide and aligned accesses for 16-bit wide fields and 32-bit wide and aligned accesses for 32-bit and 64-bit wide fields."),
    AccessOffset => (Limit, "4.1.3", "4.1.3", "accesses must stay within a capability's structure", "The device is configured via I/O and/or memory regions [...], as specified by Virtio Structure PCI Capabilities."),
    ReadOnlyWrite => (Must, "4.1.4.3.2", "4.1.4.3.2", "the driver must not write read-only fields", "The driver MUST NOT write to device_feature, num_queues, config_generation, queue_notify_off or queue_notify_data."),
    IsrWrite => (Limit, "4.1.4.5", "4.1.4.5", "the ISR status is read-only", "To avoid an extra access, simply reading this register resets it to 0 and causes the device to de-assert the interrupt."),
    CapabilityWrite => (Must, "4.1.4.1", "4.1.4.1", "the driver must not write into virtio capabilities, except the PCI configuration access window", "The driver MUST NOT write into any field of the capability structure, with the exception of those with cap_type VIRTIO_PCI_CAP_PCI_CFG [...]"),
    PciCfgLength => (Malformed, "4.1.4.9", "4.1.4.7", "the PCI configuration access window takes a cap.length of 1, 2 or 4", "The driver sets the size of the access by writing 1, 2 or 4 to cap.length."),
    PciCfgAccess => (Must, "4.1.4.9.2", "4.1.4.7.2", "the PCI configuration access window's offset is a multiple of its length, inside another virtio structure", "The driver MUST NOT write a cap.offset which is not a multiple of cap.length [...]. The driver MUST NOT read or write pci_cfg_data unless cap.bar, cap.length and cap.offset address cap.length bytes within a BAR range specified by some other Virtio Structure PCI Capability [...]"),
    NotifyBeforeDriverOk => (Must, "3.1.1", "3.1.1", "the driver must not notify before DRIVER_OK", "The driver MUST NOT send any buffer available notifications to the device before setting DRIVER_OK."),
    LegacyNotifyBeforeDriverOk => (Heuristic, "3.1.2", "3.1.2", "a legacy driver may use a queue before DRIVER_OK; a modern one may not", "Legacy driver implementations often used the device before setting the DRIVER_OK bit [...] The transitional device MUST support the driver using the device before the step 8."),
    NotifyBadQueue => (Limit, "2.7.10.2", "2.4.9.2", "a notification names a queue that is not enabled", "The device MUST handle spurious notifications from the driver."),
    LegacyHeaderAccess => (Limit, "4.1.4.10", "4.1.4.8", "legacy header registers are read at their own offset and width and written only where writable", "When using the legacy interface, transitional drivers MUST use the legacy configuration structure in BAR0 in the first I/O region of the PCI device, as documented below."),
    LegacyQueuePfnBeforeFeatures => (Heuristic, "3.1.2", "3.1.2", "a legacy driver sets its features before the queue address", "Legacy driver implementations often used the device before setting the DRIVER_OK bit, and sometimes even before writing the feature bits to the device."),
    // Device configuration space
    ConfigFieldNotOffered => (Must, "2.5.1", "2.3.1", "the driver must not access an optional configuration field whose feature the device did not offer", "For optional configuration space fields, the driver MUST check that the corresponding feature is offered before accessing that part of the configuration space."),
    ConfigWriteBeforeFeaturesOk => (Must, "3.1.1", "3.1.1", "the driver must not write the device configuration before FEATURES_OK", "4. Read device feature bits, and write the subset of feature bits understood by the OS and driver to the device. During this step the driver MAY read (but MUST NOT write) the device-specific configuration fields to check that it can support the device before accepting it."),
    BlkWritebackBeforeFeaturesOk => (Must, "5.2.5.1", "5.2.5.1", "the driver must not read virtio-blk writeback before FEATURES_OK", "The driver MUST NOT read writeback before setting the FEATURES_OK device status bit."),
    // Virtqueues (split ring)
    AvailIndexJump => (Must, "3.3.1", "3.3.1", "the driver must not make more buffers available than the queue holds", "Queue Size corresponds to the maximum number of buffers in the virtqueue. / A driver MUST NOT alter virtqueue entries for exposed buffers, i.e., buffers which have been made available to the device (and not been used by the device) of a live virtqueue."),
    AvailIndexDecrement => (Must, "2.7.6.1", "3.3.1", "the driver must not decrement the available ring's index", "A driver MUST NOT decrement the available idx on a virtqueue (ie. there is no way to \"unexpose\" buffers)."),
    AvailFlagsInvalid => (Must, "2.7.7.1", "2.4.7.1", "avail ring flags are 0 or 1 (NO_INTERRUPT), and 0 when EVENT_IDX is negotiated", "If the VIRTIO_F_EVENT_IDX feature bit is not negotiated: The driver MUST set flags to 0 or 1. [...] Otherwise, if the VIRTIO_F_EVENT_IDX feature bit is negotiated: The driver MUST set flags to 0."),
    DescriptorIndexOutOfRange => (Malformed, "2.7.5", "2.4.5", "a descriptor's next field must index the table", "The number of descriptors in the table is defined by the queue size for this virtqueue: this is the maximum possible descriptor chain length."),
    DescriptorLoop => (Must, "2.7.5.2", "2.4.5.2", "a descriptor chain must not loop or be longer than the queue", "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total; this implies that loops in the descriptor chain are forbidden! / A driver MUST NOT create a descriptor chain longer than the Queue Size of the device."),
    DescriptorOutsideMemory => (Malformed, "6.1", "", "buffers must lie in guest RAM", "If VIRTIO_F_ACCESS_PLATFORM is not offered, then a driver MUST pass only physical addresses to the device."),
    DescriptorZeroLength => (Limit, "", "", "a zero-length buffer: no spec forbids it, but QEMU refuses it too", ""),
    WriteBeforeRead => (Must, "2.7.4.2", "2.4.4.2", "device-readable descriptors must precede device-writable ones", "The driver MUST place any device-writable descriptor elements after any device-readable descriptor elements."),
    IndirectNotNegotiated => (Must, "2.7.5.3.1", "2.4.5.3.1", "VIRTQ_DESC_F_INDIRECT needs VIRTIO_F_INDIRECT_DESC", "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag unless the VIRTIO_F_INDIRECT_DESC feature was negotiated."),
    IndirectWithNext => (Must, "2.7.5.3.1", "2.4.5.3.1", "an indirect descriptor must not also have NEXT set", "A driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT in flags."),
    IndirectNested => (Must, "2.7.5.3.1", "2.4.5.3.1", "an indirect table must not contain an indirect descriptor", "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor (ie. only one table per descriptor)."),
    IndirectTableSize => (Malformed, "2.7.5.3.1", "2.4.5.3.1", "an indirect table's length must be a non-zero multiple of 16", "A driver MUST NOT create a descriptor chain longer than the Queue Size of the device. (2.7.5.3: struct indirect_descriptor_table { struct virtq_desc desc[len / 16]; };)"),
    BufferReusedInFlight => (Heuristic, "3.3.1", "3.3.1", "a buffer made available again before the device has used it", "A driver MUST NOT alter virtqueue entries for exposed buffers, i.e., buffers which have been made available to the device (and not been used by the device) of a live virtqueue."),
    // Devices
    NetTxBufferWritable => (Limit, "5.1.6.2", "5.1.6.2", "virtio-net transmit buffers must be device-readable only", "The header and packet are added as one output descriptor to the transmitq, and the device is notified of the new entry"),
    NetTxTooShort => (Malformed, "5.1.6", "5.1.6", "a virtio-net transmit chain must start with the whole virtio-net header", "Packets are transmitted by placing them in the transmitq1...transmitqN, and buffers for incoming packets are placed in the receiveq1...receiveqN. In each case, the packet itself is preceded by a header"),
    NetRxBufferReadable => (Limit, "5.1.6", "5.1.6", "virtio-net receive buffers must be device-writable only", "buffers for incoming packets are placed in the receiveq1...receiveqN."),
    NetRxBufferTooShort => (Must, "5.1.6.3.1", "5.1.6.3.1", "a virtio-net receive buffer must hold at least the virtio-net header", "If VIRTIO_NET_F_MRG_RXBUF is negotiated, each buffer MUST be at least the size of the struct virtio_net_hdr."),
    NetRxBufferSmall => (Should, "5.1.6.3.1", "5.1.6.3.1", "without MRG_RXBUF receive buffers should hold a whole frame (1526 bytes, 65562 with guest TSO/UFO)", "If VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6 or VIRTIO_NET_F_GUEST_UFO are negotiated, the driver SHOULD populate the receive queue(s) with buffers of at least 65562 bytes. Otherwise, the driver SHOULD populate the receive queue(s) with buffers of at least 1526 bytes."),
    NetTxNumBuffers => (Must, "5.1.6.2.1", "5.1.6.2.1", "the driver must set num_buffers to 0 in a transmitted virtio-net header", "The driver MUST set num_buffers to zero."),
    NetTxFlags => (Must, "5.1.6.2.1", "5.1.6.2.1", "transmit header flags are 0 without VIRTIO_NET_F_CSUM, and never DATA_VALID or RSC_INFO", "If VIRTIO_NET_F_CSUM is not negotiated, the driver MUST set flags to zero [...] The driver MUST NOT set the VIRTIO_NET_HDR_F_DATA_VALID and VIRTIO_NET_HDR_F_RSC_INFO bits in flags."),
    NetTxGsoNotNegotiated => (Must, "5.1.6.2.1", "5.1.6.2.1", "a transmit gso_type needs the matching HOST_TSO4/TSO6/UFO/USO feature", "If VIRTIO_NET_F_HOST_TSO4 is negotiated, the driver MAY set gso_type to VIRTIO_NET_HDR_GSO_TCPV4 to request TCPv4 segmentation, otherwise the driver MUST NOT set gso_type to VIRTIO_NET_HDR_GSO_TCPV4. (likewise TSO6/TCPV6, UFO/UDP, USO/UDP_L4)"),
    NetTxGsoWithoutCsum => (Must, "5.1.6.2.1", "5.1.6.2.1", "a segmentation-offload packet must also set NEEDS_CSUM", "If gso_type differs from VIRTIO_NET_HDR_GSO_NONE, then the driver MUST also set the VIRTIO_NET_HDR_F_NEEDS_CSUM bit in flags [...]"),
    NetTxGsoSizeZero => (Must, "5.1.6.2.1", "5.1.6.2.1", "a segmentation-offload packet must give its gso_size", "If gso_type differs from VIRTIO_NET_HDR_GSO_NONE, then the driver [...] MUST set gso_size to indicate the desired MSS."),
    NetTxCsumOutsidePacket => (Must, "5.1.6.2.1", "5.1.6.2.1", "csum_start and csum_offset must point inside the packet", "the driver MUST set csum_start and csum_offset such that calculating a ones' complement checksum from csum_start up until the end of the packet and storing the result at offset csum_offset from csum_start will result in a fully checksummed packet"),
    NetTxEcnWithoutHostEcn => (Should, "5.1.6.2.1", "5.1.6.2.1", "the driver should not send ECN-marked TSO packets without VIRTIO_NET_F_HOST_ECN", "The driver SHOULD NOT send to the device TCP packets requiring segmentation offload which have the Explicit Congestion Notification bit set, unless the VIRTIO_NET_F_HOST_ECN feature is negotiated [...]"),
    NetMacNotAccepted => (Should, "5.1.4.2", "5.1.4.2", "the driver should accept VIRTIO_NET_F_MAC when the device offers it", "A driver SHOULD negotiate VIRTIO_NET_F_MAC if the device offers it."),
    NetLegacyHeaderNotAlone => (Must, "5.1.6.6", "5.1.6.6", "a legacy driver without ANY_LAYOUT puts the virtio-net header in a descriptor of its own", "When using legacy interfaces, transitional drivers which have not negotiated VIRTIO_F_ANY_LAYOUT MUST use a single descriptor for the struct virtio_net_hdr on both transmit and receive, with the network data in the following descriptors."),
    BlkHeaderNotReadable => (Malformed, "5.2.6.3", "5.2.6.3", "a virtio-blk request starts with a device-readable header", "Note that these first three (four for scsi packet commands) fields are always device-readable: data is either device-readable or device-writable, depending on the request."),
    BlkHeaderTooShort => (Malformed, "5.2.6", "5.2.6", "the virtio-blk request header (type, reserved, sector) is 16 bytes", "Each request is of form: struct virtio_blk_req { le32 type; le32 reserved; le64 sector; u8 data[]; u8 status; };"),
    BlkNoStatusByte => (Malformed, "5.2.6", "5.2.6", "a virtio-blk request ends with a device-writable status byte", "The final status byte is written by the device: either VIRTIO_BLK_S_OK for success, VIRTIO_BLK_S_IOERR for device or driver error or VIRTIO_BLK_S_UNSUPP for a request unsupported by device"),
    BlkDataWrongDirection => (Malformed, "5.2.6.3", "5.2.6.3", "virtio-blk data is device-writable for reads, device-readable for writes", "data is either device-readable or device-writable, depending on the request."),
    BlkBeyondCapacity => (Must, "5.2.6.1", "5.2.6.1", "the driver must not read or write beyond the disk's capacity", "A driver MUST NOT submit a request which would cause a read or write beyond capacity."),
    BlkDataNotSectorMultiple => (Must, "5.2.6.1", "", "virtio-blk read and write data is a multiple of 512 bytes", "The length of data MUST be a multiple of 512 bytes for VIRTIO_BLK_T_IN and VIRTIO_BLK_T_OUT requests."),
    BlkFlushSectorNotZero => (Must, "5.2.6.1", "5.2.6.1", "a virtio-blk FLUSH request has sector 0", "A driver MUST set sector to 0 for a VIRTIO_BLK_T_FLUSH request."),
    BlkFlushWithData => (Should, "5.2.6.1", "5.2.6.1", "a virtio-blk FLUSH request should carry no data", "A driver SHOULD NOT include any data in a VIRTIO_BLK_T_FLUSH request."),
    BlkGetIdLength => (Must, "5.2.6.1", "", "a virtio-blk GET_ID request has exactly 20 bytes of data", "The length of data MUST be 20 bytes for VIRTIO_BLK_T_GET_ID requests."),
    BlkDiscardSegments => (Must, "5.2.6.1", "", "DISCARD and WRITE_ZEROES data is whole 16-byte segments, no more than the device's maximum", "The length of data MUST be a multiple of the size of struct virtio_blk_discard_write_zeroes for VIRTIO_BLK_T_DISCARD, [...] and VIRTIO_BLK_T_WRITE_ZEROES requests. VIRTIO_BLK_T_DISCARD requests MUST NOT contain more than max_discard_seg struct virtio_blk_discard_write_zeroes segments in data. VIRTIO_BLK_T_WRITE_ZEROES requests MUST NOT contain more than max_write_zeroes_seg struct virtio_blk_discard_write_zeroes segments in data."),
    BlkDiscardUnmap => (Must, "5.2.6.1", "", "the driver must set unmap to 0 in DISCARD segments", "The unmap bit MUST be zero for discard commands."),
    BlkRoNotAccepted => (Should, "5.2.6.1", "5.2.6.1", "the driver should accept VIRTIO_BLK_F_RO when the device offers it", "A driver SHOULD accept the VIRTIO_BLK_F_RO feature if offered."),
    BlkLegacyHeaderLayout => (Must, "5.2.6.4", "5.2.6.4", "a legacy driver without ANY_LAYOUT sends the 16-byte header and the status byte in descriptors of their own (the spec's \"8-byte\" is an erratum)", "When using legacy interfaces, transitional drivers which have not negotiated VIRTIO_F_ANY_LAYOUT: MUST use a single 8-byte descriptor containing type, reserved and sector, followed by descriptors for data, then finally a separate 1-byte descriptor for status."),
    ConsoleBufferDirection => (Must, "5.3.6.1", "5.3.6.1", "console receiveq buffers must be device-writable, transmitq ones device-readable", "The driver MUST NOT put a device-readable buffer in a receiveq. The driver MUST NOT put a device-writable buffer in a transmitq."),
    RngBufferReadable => (Must, "5.4.6.1", "5.4.6.1", "the driver must not place device-readable buffers in the entropy queue", "The driver MUST NOT place device-readable buffers into the queue."),
}

impl Rule {
    /// "virtio 1.2 §2.7.5.2, 1.0 §2.4.5.2": where to read the rule; the
    /// 1.0 number only where it differs.
    pub fn citation(self) -> String {
        let (s12, s10) = (self.section(), self.section_1_0());
        match (s12, s10) {
            ("", "") => "no spec section".to_string(),
            (s, "") => format!("virtio 1.2 §{s}, not in 1.0"),
            (s, t) if s == t => format!("virtio 1.2 §{s}"),
            (s, t) => format!("virtio 1.2 §{s}, 1.0 §{t}"),
        }
    }

    /// `Name (level, citation)` as reports show it: the level is left out
    /// for a MUST, the usual "bad driver".
    pub fn label(self) -> String {
        match self.level() {
            Level::Must => format!("{self:?} ({})", self.citation()),
            l => format!("{self:?} ({}, {})", l.name(), self.citation()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.label(), self.text())
    }
}

/// The rules as Markdown tables, the body of `docs/strict-checks.md`: the
/// MUSTs, then the warnings.
pub fn markdown_table() -> String {
    let mut s = String::new();
    for (title, fatal) in [
        ("Bad driver (MUST and malformed)", true),
        ("Warnings", false),
    ] {
        s.push_str(&format!(
            "\n### {title}\n\n| # | rule | level | virtio 1.2 | 1.0 | what the driver must (not) do | the spec says |\n|---|---|---|---|---|---|---|\n"
        ));
        let rules = Rule::ALL.iter().filter(|r| r.level().is_fatal() == fatal);
        for (i, r) in rules.enumerate() {
            let or_dash = |s: &'static str| if s.is_empty() { "—" } else { s };
            s.push_str(&format!(
                "| {} | `{r:?}` | {} | {} | {} | {} | {} |\n",
                i + 1,
                r.level().name(),
                or_dash(r.section()),
                or_dash(r.section_1_0()),
                r.text(),
                or_dash(r.quote()),
            ));
        }
    }
    s
}

/// A rule broken by a particular driver on a particular device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    /// "virtio-blk 00:02.0", filled in by the transport.
    pub device: String,
    pub queue: Option<u16>,
    /// What exactly the driver did: values, addresses.
    pub detail: String,
    /// The device's last traced events before it (oldest first), shown
    /// with a bad-driver report.
    pub recent: Vec<String>,
}

impl Violation {
    pub fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Self {
            rule,
            device: String::new(),
            queue: None,
            detail: detail.into(),
            recent: Vec::new(),
        }
    }

    pub fn with_recent(mut self, recent: Vec<String>) -> Self {
        self.recent = recent;
        self
    }

    pub fn on_queue(mut self, queue: u16) -> Self {
        self.queue = Some(queue);
        self
    }

    pub fn on_device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }
}

impl Violation {
    /// Whether this stops the guest (in strict mode).
    pub fn is_fatal(&self) -> bool {
        self.rule.level().is_fatal()
    }
}

impl Violation {
    /// "DEVICE [queue N]: Rule (virtio 1.2 §x): what the driver must do —
    /// what it did".
    pub fn body(&self) -> String {
        let queue = self
            .queue
            .map(|q| format!(" queue {q}"))
            .unwrap_or_default();
        format!("{}{queue}: {} — {}", self.device, self.rule, self.detail)
    }

    /// What the launcher does about it: a broken MUST stops the guest (or
    /// with `--lenient` flags DEVICE_NEEDS_RESET); anything else is a
    /// warning unless `--warnings-as-errors` makes it a stop too.
    pub fn verdict(&self, lenient: bool, warnings_as_errors: bool) -> Verdict {
        match (self.is_fatal(), lenient, warnings_as_errors) {
            (true, false, _) | (false, _, true) => Verdict::Stop,
            (true, true, _) => Verdict::NeedsReset,
            (false, _, false) => Verdict::Warn,
        }
    }
}

/// See [`Violation::verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// End the run: exit code 3, the report on stderr.
    Stop,
    /// `--lenient`: log, set DEVICE_NEEDS_RESET, carry on.
    NeedsReset,
    /// Print once per rule and device, carry on.
    Warn,
}

/// One line: "bad driver: BODY" for a broken MUST, "warning: BODY" for
/// anything else (see [`Violation::body`]).
impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_fatal() {
            "bad driver"
        } else {
            "warning"
        };
        write!(f, "{kind}: {}", self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_a_section_and_text() {
        assert!(Rule::ALL.len() >= 30);
        for r in Rule::ALL {
            assert!(r.text().len() > 10, "{r:?}");
            if matches!(r.level(), Level::Must | Level::Should) {
                assert!(!r.section().is_empty() && !r.quote().is_empty(), "{r:?}");
            }
        }
    }

    /// `docs/strict-checks.md` must list exactly the rules in the table;
    /// run with `UPDATE_DOCS=1` to rewrite its table.
    #[test]
    fn docs_list_every_rule() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/strict-checks.md");
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        let (head, _) = doc.split_once("<!-- rules -->").unwrap_or((&doc, ""));
        let want = format!("{head}<!-- rules -->\n{}", markdown_table());
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        assert_eq!(
            doc, want,
            "docs/strict-checks.md is stale: run UPDATE_DOCS=1 cargo test -p devices"
        );
    }

    #[test]
    fn verdicts_follow_the_level_and_the_options() {
        let must = Violation::new(Rule::DescriptorLoop, "");
        let warn = Violation::new(Rule::DescriptorZeroLength, "");
        assert_eq!(must.verdict(false, false), Verdict::Stop);
        assert_eq!(must.verdict(true, false), Verdict::NeedsReset);
        assert_eq!(must.verdict(false, true), Verdict::Stop);
        assert_eq!(warn.verdict(false, false), Verdict::Warn);
        assert_eq!(warn.verdict(true, false), Verdict::Warn);
        assert_eq!(warn.verdict(false, true), Verdict::Stop);
        assert_eq!(warn.verdict(true, true), Verdict::Stop);
    }

    #[test]
    fn report_names_device_queue_rule_and_section() {
        let v = Violation::new(Rule::DescriptorLoop, "descriptor 3 leads back to 1")
            .on_device("virtio-blk 00:02.0")
            .on_queue(0);
        let s = v.to_string();
        let want = format!(
            "bad driver: virtio-blk 00:02.0 queue 0: DescriptorLoop ({}): ",
            Rule::DescriptorLoop.citation()
        );
        assert!(s.starts_with(&want), "{s}");
        assert!(s.ends_with(" — descriptor 3 leads back to 1"), "{s}");
        let w = Violation::new(Rule::DescriptorZeroLength, "descriptor 2 is empty")
            .on_device("virtio-rng 00:03.0");
        assert!(
            w.to_string()
                .starts_with("warning: virtio-rng 00:03.0: DescriptorZeroLength (device limit, "),
            "{w}"
        );
    }
}
