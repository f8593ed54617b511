//! rtgt-iscsi
