//! The LUN inventory of one target (SAM-5 §4.6.2): routes commands to LUs and answers
//! REPORT LUNS and commands to LUNs that do not exist.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cdb::{Cdb, Opcode};
use crate::lu::{Command, DeviceType, LogicalUnit, Outcome, Response};
use crate::out::Out;
use crate::sense::{Asc, Sense, SenseKey};
use crate::spc;
use crate::xcopy::LuInfo;

/// The LUN inventory of one target, including LUN 0 (controller). Built by the target
/// crate; cheap to clone (Arcs).
#[derive(Clone, Default)]
pub struct LunTable {
    luns: BTreeMap<u64, Arc<LogicalUnit>>,
}

impl std::fmt::Debug for LunTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.luns.keys()).finish()
    }
}

impl LunTable {
    pub fn new() -> LunTable {
        LunTable::default()
    }

    /// Add or replace the LU at its LUN.
    pub fn insert(&mut self, lu: Arc<LogicalUnit>) {
        self.luns.insert(lu.lun(), lu);
    }

    pub fn remove(&mut self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.luns.remove(&lun)
    }

    pub fn get(&self, lun: u64) -> Option<&Arc<LogicalUnit>> {
        self.luns.get(&lun)
    }

    /// LUs in ascending LUN order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<LogicalUnit>> {
        self.luns.values()
    }

    pub fn len(&self) -> usize {
        self.luns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.luns.is_empty()
    }

    /// Route a command to `lun`: REPORT LUNS (SPC-4 §6.33, answered for any LUN),
    /// INQUIRY to a missing LUN (peripheral qualifier 3, type 0x1f) and REQUEST SENSE /
    /// other commands to a missing LUN (ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED)
    /// are answered here; the rest goes to the LU.
    pub fn execute(&self, lun: u64, cmd: &Command<'_>, data_in: &mut [u8]) -> Outcome {
        let op = cmd.cdb.first().copied().map(Opcode);
        if op == Some(Opcode::REPORT_LUNS) {
            return Outcome::Done(self.report_luns(cmd, data_in));
        }
        if let Some(lu) = self.luns.get(&lun) {
            if op == Some(Opcode::EXTENDED_COPY) && lu.cfg().device_type == DeviceType::Disk {
                // The copy manager needs every LU a copy may name (SPC-4 §6.4.5):
                // the disks of this target that are ready.
                let lus: Vec<LuInfo> = self
                    .luns
                    .values()
                    .filter(|l| l.medium_ready())
                    .filter_map(|l| LuInfo::from_config(l.lun(), &l.cfg()))
                    .collect();
                return lu.extended_copy(cmd, &lus);
            }
            return lu.execute(cmd, data_in);
        }
        Outcome::Done(missing_lun(cmd, data_in))
    }

    fn report_luns(&self, cmd: &Command<'_>, data_in: &mut [u8]) -> Response {
        let (select_report, allocation_length) = match Cdb::decode(cmd.cdb) {
            Ok(Cdb::ReportLuns {
                select_report,
                allocation_length,
            }) => (select_report, allocation_length),
            Ok(_) => return Response::check_condition(Sense::invalid_field_in_cdb(0, None)),
            Err(e) => return Response::check_condition(e.sense()),
        };
        match spc::report_luns(
            self.luns.keys().copied(),
            select_report,
            allocation_length,
            data_in,
        ) {
            Ok(n) => {
                // Reporting the inventory clears REPORTED LUNS DATA HAS CHANGED for
                // this I_T nexus (SPC-4 §6.33).
                for lu in self.luns.values() {
                    lu.clear_unit_attention(cmd.nexus, Asc::REPORTED_LUNS_DATA_HAS_CHANGED);
                }
                Response::good(n)
            }
            Err(sense) => Response::check_condition(sense),
        }
    }
}

/// Commands to a LUN with no logical unit behind it (SPC-4 §6.6.2, §6.39, SAM-5 §5.8.4).
fn missing_lun(cmd: &Command<'_>, data_in: &mut [u8]) -> Response {
    let not_supported = Sense::new(SenseKey::ILLEGAL_REQUEST, Asc::LOGICAL_UNIT_NOT_SUPPORTED);
    match Cdb::decode(cmd.cdb) {
        Ok(Cdb::Inquiry {
            evpd: false,
            allocation_length,
            ..
        }) => {
            // PERIPHERAL QUALIFIER 011b, PERIPHERAL DEVICE TYPE 1Fh: no LU here.
            let mut b = [0u8; 36];
            b[0] = 0x7f;
            b[2] = spc::VERSION_SPC4;
            b[3] = 0x12;
            b[4] = 31;
            let mut out = Out::new(data_in, usize::from(allocation_length));
            out.put(&b);
            Response::good(out.finish())
        }
        // SPC-4 §6.39: REQUEST SENSE to an unsupported LUN returns GOOD with the
        // sense data LOGICAL UNIT NOT SUPPORTED.
        Ok(Cdb::RequestSense {
            desc,
            allocation_length,
        }) => Response::good(spc::request_sense(
            &not_supported,
            desc,
            allocation_length,
            data_in,
        )),
        _ => Response::check_condition(not_supported),
    }
}
