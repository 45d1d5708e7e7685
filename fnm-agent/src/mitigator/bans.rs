//! The ban manager: the ban list and the XDP drop tables kept in agreement.
//!
//! Order matters when something fails. Adding: the kernel entry first, then the saved list;
//! if saving fails, the kernel entry is removed again and the caller gets the error, so a ban
//! answered with an error never drops anything. Removing: the kernel entry first, then the
//! list; if saving fails, the kernel entry is put back and the caller gets the error, so an
//! unban answered with an error keeps both dropping and listed. Either way the answer, the
//! list and the kernel agree.

use crate::{
    actions::ActionError,
    bans::{unix_now, Ban, BanOrigin, BanStore, DropMatch},
    dataplane::{DataPlaneError, DataPlaneHandle},
    prefix::Prefix,
};

/// Which saved ban goes into the kernel first at start: the operator's (manual) bans before
/// detection's, then those without an end, then the newest.
pub fn reinstate_order(a: &Ban, b: &Ban) -> std::cmp::Ordering {
    let rank = |ban: &Ban| {
        (
            ban.origin != BanOrigin::Manual,
            ban.expires.is_some(),
            std::cmp::Reverse(ban.created),
        )
    };
    rank(a).cmp(&rank(b))
}

/// The ban list over the data plane.
pub struct BanManager {
    store: BanStore,
    dataplane: DataPlaneHandle,
}

impl BanManager {
    /// Bans in `store`, enforced by `dataplane` (which may be absent: then bans are only
    /// recorded, for the other actions).
    pub fn new(store: BanStore, dataplane: DataPlaneHandle) -> Self {
        Self { store, dataplane }
    }

    /// The data plane.
    pub fn dataplane(&self) -> &DataPlaneHandle {
        &self.dataplane
    }

    /// Puts every saved ban into the kernel (at start), most important first (see
    /// [`reinstate_order`]), so when the drop tables hold fewer entries than were saved (a
    /// smaller `xdp.max_drop_entries`) the ones that fit are the ones that matter; returns
    /// those that failed, with why. They stay listed, so the operator sees them.
    pub fn reinstate(&self) -> Vec<(Ban, String)> {
        let mut failed = Vec::new();
        if !self.dataplane.is_present() {
            return failed;
        }
        let mut bans: Vec<&Ban> = self.store.list().collect();
        bans.sort_by(|a, b| reinstate_order(a, b));
        for ban in bans {
            if let Err(e) = self.dataplane.add_drop(ban.prefix, ban.match_on) {
                failed.push((ban.clone(), e.to_string()));
            }
        }
        failed
    }

    /// Adds (or renews) a drop entry: kernel first, then the list; rolled back on failure.
    pub fn add(
        &mut self,
        prefix: Prefix,
        match_on: DropMatch,
        expires: Option<u64>,
        origin: BanOrigin,
        reason: String,
    ) -> Result<(), ActionError> {
        let existed = self.store.get(prefix, match_on).is_some();
        match self.dataplane.add_drop(prefix, match_on) {
            Ok(()) | Err(DataPlaneError::Absent) => {}
            Err(DataPlaneError::Kernel(m)) => return Err(ActionError::DataPlane(m)),
        }
        let ban = Ban {
            prefix,
            match_on,
            created: unix_now(),
            expires,
            origin,
            reason,
        };
        if let Err(e) = self.store.insert(ban) {
            if !existed {
                let _ = self.dataplane.remove_drop(prefix, match_on);
            }
            return Err(ActionError::State(e.to_string()));
        }
        tracing::info!("drop {prefix} ({}) in force", match_on.as_str());
        Ok(())
    }

    /// Removes a drop entry: kernel first, then the list; put back on failure. Returns the
    /// ban removed (`None`: there was none).
    pub fn remove(
        &mut self,
        prefix: Prefix,
        match_on: DropMatch,
    ) -> Result<Option<Ban>, ActionError> {
        let Some(ban) = self.store.get(prefix, match_on).cloned() else {
            return Ok(None);
        };
        match self.dataplane.remove_drop(prefix, match_on) {
            Ok(()) | Err(DataPlaneError::Absent) => {}
            Err(DataPlaneError::Kernel(m)) => return Err(ActionError::DataPlane(m)),
        }
        if let Err(e) = self.store.remove(prefix, match_on) {
            let _ = self.dataplane.add_drop(prefix, match_on);
            return Err(ActionError::State(e.to_string()));
        }
        tracing::info!("drop {prefix} ({}) lifted", match_on.as_str());
        Ok(Some(ban))
    }

    /// One ban.
    pub fn get(&self, prefix: Prefix, match_on: DropMatch) -> Option<&Ban> {
        self.store.get(prefix, match_on)
    }

    /// Every ban.
    pub fn list(&self) -> impl Iterator<Item = &Ban> {
        self.store.list()
    }

    /// Bans whose time has come.
    pub fn expired(&self, now: u64) -> Vec<Ban> {
        self.store.expired(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(prefix: &str, origin: BanOrigin, created: u64, expires: Option<u64>) -> Ban {
        Ban {
            prefix: prefix.parse().unwrap(),
            match_on: DropMatch::Src,
            created,
            expires,
            origin,
            reason: String::new(),
        }
    }

    #[test]
    fn manual_then_permanent_then_newest_bans_are_reinstated_first() {
        let mut bans = [
            ban("192.0.2.1/32", BanOrigin::Detection, 300, Some(900)),
            ban("192.0.2.2/32", BanOrigin::Manual, 100, Some(900)),
            ban("192.0.2.3/32", BanOrigin::Detection, 200, None),
            ban("192.0.2.4/32", BanOrigin::Manual, 50, None),
            ban("192.0.2.5/32", BanOrigin::Detection, 400, Some(900)),
        ];
        bans.sort_by(reinstate_order);
        let order: Vec<String> = bans.iter().map(|b| b.prefix.to_string()).collect();
        assert_eq!(
            order,
            [
                "192.0.2.4/32",
                "192.0.2.2/32",
                "192.0.2.3/32",
                "192.0.2.5/32",
                "192.0.2.1/32"
            ]
        );
    }
}
