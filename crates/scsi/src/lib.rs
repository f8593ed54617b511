//! rtgt-scsi
