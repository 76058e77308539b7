//! How an invocation's version was chosen: recorded with it, returned with its answer, and
//! kept by queued work so that a retry or a late run uses the version it was admitted with.

use genrt_functions::AliasName;
use uuid::Uuid;

use crate::store::InvocationRow;

#[derive(Debug, Clone, Default, PartialEq)]
pub enum Via {
    /// No version named and no `default` alias: the latest version.
    #[default]
    Latest,
    /// `name@3`, or a `version` field.
    Pinned,
    /// `name@prod`, or the `default` alias for a bare name; `split` when the alias divides
    /// its traffic between versions.
    Alias { alias: AliasName, split: bool },
    /// A background copy of invocation `of`, run on the alias's shadow version.
    Shadow { of: Uuid, alias: AliasName },
}

impl Via {
    pub fn alias(&self) -> Option<&AliasName> {
        match self {
            Via::Alias { alias, .. } | Via::Shadow { alias, .. } => Some(alias),
            Via::Latest | Via::Pinned => None,
        }
    }

    pub fn split(&self) -> bool {
        matches!(self, Via::Alias { split: true, .. })
    }

    pub fn shadow_of(&self) -> Option<Uuid> {
        match self {
            Via::Shadow { of, .. } => Some(*of),
            _ => None,
        }
    }

    /// What a stored row says (queued work runs with what it was admitted with). A pinned
    /// version is not told apart from the latest in the row: both ran the row's version.
    pub fn of_row(row: &InvocationRow) -> Self {
        let alias = row.alias.as_deref().and_then(|a| AliasName::parse(a).ok());
        match (alias, row.shadow_of) {
            (Some(alias), Some(of)) => Via::Shadow { of, alias },
            (Some(alias), None) => Via::Alias {
                alias,
                split: row.split,
            },
            (None, _) => Via::Latest,
        }
    }
}
