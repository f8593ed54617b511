//! CHAP accounts as tgt keeps them (`tgtadm --mode account`): one global
//! list of user/password pairs, bound to targets or, without `--tid`, to
//! discovery sessions — incoming accounts (the initiator proves one of them)
//! and at most one outgoing account (the target proves it, mutual CHAP).
//! A target, or discovery, with an incoming account bound requires CHAP
//! (RFC 7143 §12.1.3); one without logs in with AuthMethod=None.

use rtgt_iscsi::{ChapAccount, ChapPolicy};
use rtgt_mgmt::TgtadmError;

/// One account. The password never leaves this module except as the CHAP
/// secret handed to a login: `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Accounts bound to one target, or to discovery sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    /// In bind order.
    pub incoming: Vec<String>,
    pub outgoing: Option<String>,
}

impl Bindings {
    /// The lines of tgt's "Account information:": incoming users, then the
    /// outgoing one marked "(outgoing)".
    pub fn show_lines(&self) -> Vec<String> {
        self.incoming
            .iter()
            .cloned()
            .chain(
                self.outgoing
                    .iter()
                    .map(|u| rtgt_mgmt::show::outgoing_account(u)),
            )
            .collect()
    }

    fn forget(&mut self, user: &str) {
        self.incoming.retain(|u| u != user);
        if self.outgoing.as_deref() == Some(user) {
            self.outgoing = None;
        }
    }
}

/// The daemon's account list and the discovery bindings.
#[derive(Debug, Default)]
pub struct Accounts {
    /// Newest first, the order tgt shows them in.
    list: Vec<Account>,
    pub discovery: Bindings,
}

impl Accounts {
    fn get(&self, user: &str) -> Option<&Account> {
        self.list.iter().find(|a| a.user == user)
    }

    /// `--op new --user U --password P`.
    pub fn add(&mut self, user: &str, password: &str) -> Result<(), TgtadmError> {
        if user.is_empty() || password.is_empty() {
            return Err(TgtadmError::InvalidRequest);
        }
        if self.get(user).is_some() {
            return Err(TgtadmError::UserExist);
        }
        self.list.insert(
            0,
            Account {
                user: user.to_string(),
                password: password.to_string(),
            },
        );
        Ok(())
    }

    /// `--op delete --user U`: also unbinds it from discovery and from every
    /// target in `targets`, as tgt does.
    pub fn delete<'a>(
        &mut self,
        user: &str,
        targets: impl Iterator<Item = &'a mut Bindings>,
    ) -> Result<(), TgtadmError> {
        let before = self.list.len();
        self.list.retain(|a| a.user != user);
        if self.list.len() == before {
            return Err(TgtadmError::NoUser);
        }
        self.discovery.forget(user);
        for b in targets {
            b.forget(user);
        }
        Ok(())
    }

    /// `--op bind [--tid N] --user U [--outgoing]` into `to`.
    pub fn bind(&self, to: &mut Bindings, user: &str, outgoing: bool) -> Result<(), TgtadmError> {
        if self.get(user).is_none() {
            return Err(TgtadmError::NoUser);
        }
        if outgoing {
            if to.outgoing.is_some() {
                return Err(TgtadmError::OutAccountExist);
            }
            to.outgoing = Some(user.to_string());
        } else {
            if to.incoming.iter().any(|u| u == user) {
                return Err(TgtadmError::UserExist);
            }
            to.incoming.push(user.to_string());
        }
        Ok(())
    }

    /// `--op unbind [--tid N] --user U [--outgoing]` from `from`.
    pub fn unbind(from: &mut Bindings, user: &str, outgoing: bool) -> Result<(), TgtadmError> {
        if outgoing {
            if from.outgoing.as_deref() != Some(user) {
                return Err(TgtadmError::NoUser);
            }
            from.outgoing = None;
        } else {
            let before = from.incoming.len();
            from.incoming.retain(|u| u != user);
            if from.incoming.len() == before {
                return Err(TgtadmError::NoUser);
            }
        }
        Ok(())
    }

    /// User names, newest first (`--op show`).
    pub fn users(&self) -> Vec<String> {
        self.list.iter().map(|a| a.user.clone()).collect()
    }

    /// What a login to something bound as `b` must prove: `None` when no
    /// incoming account is bound (no authentication).
    pub fn policy(&self, b: &Bindings) -> Option<ChapPolicy> {
        let account = |u: &String| {
            self.get(u)
                .map(|a| ChapAccount::new(a.user.as_str(), a.password.as_str()))
        };
        let incoming: Vec<_> = b.incoming.iter().filter_map(account).collect();
        if incoming.is_empty() {
            return None;
        }
        Some(ChapPolicy {
            incoming,
            outgoing: b.outgoing.as_ref().and_then(account),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_behave_like_tgts() {
        let mut a = Accounts::default();
        a.add("u1", "secret-one-12").unwrap();
        assert_eq!(a.add("u1", "x"), Err(TgtadmError::UserExist));
        assert_eq!(a.add("", "x"), Err(TgtadmError::InvalidRequest));
        a.add("out", "secret-out-12").unwrap();
        a.add("u2", "secret-two-12").unwrap();
        assert_eq!(a.users(), ["u2", "out", "u1"], "newest first");

        let mut t = Bindings::default();
        a.bind(&mut t, "u1", false).unwrap();
        assert_eq!(a.bind(&mut t, "u1", false), Err(TgtadmError::UserExist));
        assert_eq!(a.bind(&mut t, "nobody", false), Err(TgtadmError::NoUser));
        a.bind(&mut t, "out", true).unwrap();
        assert_eq!(
            a.bind(&mut t, "u2", true),
            Err(TgtadmError::OutAccountExist)
        );
        a.bind(&mut t, "u2", false).unwrap();
        assert_eq!(t.show_lines(), ["u1", "u2", "out (outgoing)"]);

        let s = a.policy(&t).unwrap();
        assert_eq!(s.incoming.len(), 2);
        assert_eq!(s.outgoing.as_ref().map(|a| a.user.as_str()), Some("out"));
        let shown = format!("{s:?} {:?}", a);
        for password in ["secret-one-12", "secret-out-12", "secret-two-12"] {
            assert!(!shown.contains(password), "no password in {shown}");
        }

        assert_eq!(
            Accounts::unbind(&mut t, "u2", true),
            Err(TgtadmError::NoUser)
        );
        Accounts::unbind(&mut t, "out", true).unwrap();
        assert_eq!(
            Accounts::unbind(&mut t, "out", true),
            Err(TgtadmError::NoUser)
        );

        let mut disc = std::mem::take(&mut a.discovery);
        a.bind(&mut disc, "u1", false).unwrap();
        a.discovery = disc;
        a.delete("u1", std::iter::once(&mut t)).unwrap();
        assert_eq!(t.show_lines(), ["u2"], "deleted accounts are unbound");
        assert!(a.discovery.incoming.is_empty());
        assert_eq!(a.delete("u1", std::iter::empty()), Err(TgtadmError::NoUser));

        assert_eq!(
            a.policy(&Bindings::default()),
            None,
            "nothing bound: no CHAP"
        );
        let only_out = Bindings {
            incoming: vec![],
            outgoing: Some("out".into()),
        };
        assert_eq!(
            a.policy(&only_out),
            None,
            "an outgoing account alone asks nothing"
        );
    }
}
