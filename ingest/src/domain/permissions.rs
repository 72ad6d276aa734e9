//! Who may do what: the one authorization table of the staff's routes, the
//! API's and the dashboard's alike. A route names the [`Permission`] it
//! needs; the dashboard asks the same table whether to show a button, and
//! refuses a forged form with the same answer as the API.

/// Something a staff member may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permission {
    /// Read any account, its balances, holds and history; search and read
    /// transfers; watch the overview.
    ReadLedger,
    /// Follow what staff submitted (`/v1/staff/commands/{id}`).
    ReadCommands,
    /// Freeze, unfreeze and close accounts.
    ChangeAccountStatus,
    /// Set any account's spending limits.
    SetSpendingLimits,
    /// Fund an account from cash-in.
    Deposit,
    /// Read the dead letters and the outbox, replay and retry them.
    Operate,
    /// Read the audit log.
    ReadAudit,
    /// Manage users' roles and freezes, API clients and system accounts.
    Administer,
}

impl Permission {
    /// Every permission.
    #[cfg(test)]
    pub(crate) const ALL: [Permission; 8] = [
        Permission::ReadLedger,
        Permission::ReadCommands,
        Permission::ChangeAccountStatus,
        Permission::SetSpendingLimits,
        Permission::Deposit,
        Permission::Operate,
        Permission::ReadAudit,
        Permission::Administer,
    ];

    /// The roles that have it.
    #[must_use]
    pub(crate) const fn roles(self) -> &'static [&'static str] {
        match self {
            Permission::ReadLedger => &["support", "admin", "ops"],
            Permission::ReadCommands | Permission::Deposit | Permission::Operate => &["admin", "ops"],
            Permission::ChangeAccountStatus
            | Permission::SetSpendingLimits
            | Permission::ReadAudit
            | Permission::Administer => &["admin"],
        }
    }

    /// Whether `role` has it.
    #[must_use]
    pub(crate) fn granted_to(self, role: &str) -> bool {
        self.roles().contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_reads_ops_operates_and_funds_admin_does_everything_customers_nothing() {
        for permission in Permission::ALL {
            assert!(permission.granted_to("admin"), "{permission:?}");
            assert!(!permission.granted_to("customer"), "{permission:?}");
        }
        let support: Vec<Permission> =
            Permission::ALL.into_iter().filter(|permission| permission.granted_to("support")).collect();
        assert_eq!(support, [Permission::ReadLedger]);
        let ops: Vec<Permission> =
            Permission::ALL.into_iter().filter(|permission| permission.granted_to("ops")).collect();
        assert_eq!(ops, [Permission::ReadLedger, Permission::ReadCommands, Permission::Deposit, Permission::Operate]);
    }
}
