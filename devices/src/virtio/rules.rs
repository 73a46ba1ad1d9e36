//! The strict checks: every way a guest driver can break the virtio
//! specification that a device can observe, one variant per rule, each with
//! the section of the virtio 1.0 specification (or, for the legacy
//! interface, of its "Legacy Interface" notes) it enforces.
//!
//! Transport and queue code report a [`Violation`] naming the rule; the
//! launcher stops the guest with a "bad driver" report (or, with
//! `--lenient`, logs it and sets DEVICE_NEEDS_RESET). `docs/strict-checks.md`
//! is checked against [`Rule::ALL`] by a test, so the list cannot drift.

use std::fmt;

macro_rules! rules {
    ($( $name:ident => ($section:literal, $text:literal), )*) => {
        /// One rule of the virtio specification a driver can break.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rule { $( $name, )* }

        impl Rule {
            /// Every rule, in table order.
            pub const ALL: &'static [Rule] = &[ $( Rule::$name, )* ];

            /// The specification section the rule comes from.
            pub fn section(self) -> &'static str {
                match self { $( Rule::$name => $section, )* }
            }

            /// One line saying what the driver must (not) do.
            pub fn text(self) -> &'static str {
                match self { $( Rule::$name => $text, )* }
            }
        }
    };
}

rules! {
    // Device status (2.1, 3.1.1)
    StatusOrder => ("3.1.1", "status bits must be set in order: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK"),
    StatusClearedBit => ("2.1.2", "the driver must not clear a device status bit (only writing 0 resets)"),
    StatusFailedThenMore => ("3.1.1", "after setting FAILED the driver must reset before going on"),
    FeaturesOkRefused => ("3.1.1", "the driver must not go on after the device refused FEATURES_OK"),
    // Feature negotiation (2.2, 6)
    FeatureNotOffered => ("2.2.1", "the driver must not accept a feature the device did not offer"),
    FeatureAfterFeaturesOk => ("3.1.1", "the driver must not change features after FEATURES_OK"),
    FeatureVersion1Missing => ("6.1", "a modern driver must accept VIRTIO_F_VERSION_1"),
    // Queue setup (4.1.4.3, 2.4)
    QueueSetupAfterDriverOk => ("4.1.4.3.2", "queue configuration must not change after DRIVER_OK"),
    QueueSetupBeforeFeaturesOk => ("3.1.1", "queues are set up after FEATURES_OK, before DRIVER_OK"),
    QueueSelectOutOfRange => ("4.1.4.3", "queue_select must name an existing queue when its fields are used"),
    QueueSizeInvalid => ("2.4", "queue size must be a power of two no larger than the device's maximum"),
    QueueAddressAlignment => ("2.4", "descriptor table 16-, available ring 2-, used ring 4-byte aligned"),
    QueueAddressOutsideMemory => ("2.4", "the virtqueue's rings must lie in guest RAM"),
    QueueEnableValue => ("4.1.4.3.2", "the driver must write 1 to queue_enable, never 0"),
    QueueEnabledIncomplete => ("4.1.4.3.2", "a queue must be fully configured before it is enabled"),
    // Register access (4.1.3, 4.1.4)
    AccessWidth => ("4.1.3.1", "common configuration fields must be accessed with their own width"),
    AccessOffset => ("4.1.4", "accesses must stay within a capability's structure"),
    ReadOnlyWrite => ("4.1.4.3", "the driver must not write read-only fields"),
    IsrWrite => ("4.1.4.5", "the ISR status is read-only"),
    NotifyBeforeDriverOk => ("3.1.1", "the driver must not notify before DRIVER_OK"),
    NotifyBadQueue => ("4.1.4.4", "a notification must name an enabled queue"),
    PciCfgAccess => ("4.1.4.7.1", "VIRTIO_PCI_CAP_PCI_CFG accesses need an aligned offset and a length of 1, 2 or 4"),
    MsixVectorInvalid => ("4.1.5.1.2", "an MSI-X vector must be one the function has, or NO_VECTOR"),
    // Virtqueues (2.4)
    AvailIndexJump => ("2.4.6", "the driver must not make more buffers available than the queue holds"),
    DescriptorIndexOutOfRange => ("2.4.5", "a descriptor's next field must index the table"),
    DescriptorLoop => ("2.4.5", "a descriptor chain must not loop or be longer than the queue"),
    DescriptorOutsideMemory => ("2.4.5", "buffers must lie in guest RAM"),
    DescriptorZeroLength => ("2.4.5", "a buffer must not be empty"),
    WriteBeforeRead => ("2.4.4.2", "device-readable descriptors must precede device-writable ones"),
    IndirectNotNegotiated => ("2.4.5.3.1", "VIRTQ_DESC_F_INDIRECT needs VIRTIO_F_INDIRECT_DESC"),
    IndirectWithNext => ("2.4.5.3.1", "an indirect descriptor must not also have NEXT set"),
    IndirectNested => ("2.4.5.3.1", "an indirect table must not contain an indirect descriptor"),
    IndirectTableSize => ("2.4.5.3.1", "an indirect table's length must be a non-zero multiple of 16"),
    // Device-specific layouts (5.x)
    NetTxBufferWritable => ("5.1.6.2", "virtio-net transmit buffers must be device-readable only"),
    NetTxTooShort => ("5.1.6.2", "a virtio-net transmit chain must start with the whole virtio-net header"),
    NetRxBufferReadable => ("5.1.6.3", "virtio-net receive buffers must be device-writable only"),
    NetRxBufferTooShort => ("5.1.6.3.1", "a virtio-net receive buffer must hold at least the virtio-net header"),
    BlkHeaderNotReadable => ("5.2.6", "a virtio-blk request starts with a device-readable header"),
    BlkHeaderTooShort => ("5.2.6", "the virtio-blk request header (type, reserved, sector) is 16 bytes"),
    BlkNoStatusByte => ("5.2.6", "a virtio-blk request ends with a device-writable status byte"),
    BlkDataWrongDirection => ("5.2.6", "virtio-blk data is device-writable for reads, device-readable for writes"),
    ConsoleBufferDirection => ("5.3.6", "console receiveq buffers must be device-writable, transmitq ones device-readable"),
    RngBufferReadable => ("5.4.6.1", "the driver must not place device-readable buffers in the entropy queue"),
    // Legacy interface (4.1.4.8 / 0.9.5)
    LegacyQueuePfnBeforeFeatures => ("4.1.4.8", "a legacy driver sets its features before the queue address"),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} (virtio 1.0 §{}): {}",
            self,
            self.section(),
            self.text()
        )
    }
}

/// The rules as a Markdown table, the body of `docs/strict-checks.md`.
pub fn markdown_table() -> String {
    let mut s = String::from(
        "| # | rule | virtio 1.0 section | what the driver must (not) do |\n|---|---|---|---|\n",
    );
    for (i, r) in Rule::ALL.iter().enumerate() {
        s.push_str(&format!(
            "| {} | `{r:?}` | §{} | {} |\n",
            i + 1,
            r.section(),
            r.text()
        ));
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
}

impl Violation {
    pub fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Self {
            rule,
            device: String::new(),
            queue: None,
            detail: detail.into(),
        }
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

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad driver: {}", self.device)?;
        if let Some(q) = self.queue {
            write!(f, " queue {q}")?;
        }
        write!(
            f,
            ": {:?} (virtio 1.0 §{}): {} — {}",
            self.rule,
            self.rule.section(),
            self.rule.text(),
            self.detail
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_a_section_and_text() {
        assert!(Rule::ALL.len() >= 30);
        for r in Rule::ALL {
            assert!(!r.section().is_empty() && r.text().len() > 10, "{r:?}");
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
    fn report_names_device_queue_rule_and_section() {
        let v = Violation::new(Rule::DescriptorLoop, "descriptor 3 leads back to 1")
            .on_device("virtio-blk 00:02.0")
            .on_queue(0);
        let s = v.to_string();
        assert!(
            s.starts_with(
                "bad driver: virtio-blk 00:02.0 queue 0: DescriptorLoop (virtio 1.0 §2.4.5)"
            ),
            "{s}"
        );
    }
}
