//! Roles of API keys and console users, and which includes which.

use serde::{Deserialize, Serialize};

/// `admin` ⊃ `operator` ⊃ `read_only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    ReadOnly,
    Operator,
    Admin,
}

impl Role {
    pub fn includes(self, required: Role) -> bool {
        self >= required
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read_only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read_only" => Some(Role::ReadOnly),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_includes_operator_which_includes_read_only_but_not_the_reverse() {
        assert!(Role::Admin.includes(Role::Operator));
        assert!(Role::Operator.includes(Role::ReadOnly));
        assert!(!Role::ReadOnly.includes(Role::Operator));
        assert!(!Role::Operator.includes(Role::Admin));
        for r in [Role::ReadOnly, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}
