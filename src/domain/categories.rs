//! Category paths, materialized (`1/4/28`: the ids from the root down): their shape,
//! a new node's path, the index range of a subtree, and planning a subtree move. Pure
//! functions; the catalog stores answer every "in this category and below" from an
//! ordinary index on the path with [`descendants_range`].

use super::catalog::{invalid, Category, Invalid, MAX_CATEGORY_DEPTH};

/// Checks the shape of a path (`1/4/28`: positive ids, at most [`MAX_CATEGORY_DEPTH`] deep)
/// and returns its ids.
pub(crate) fn parse_path(path: &str) -> Result<Vec<i64>, Invalid> {
    let bad = || {
        invalid(format!(
            "category path must look like 1/4/28, got {:?}",
            path.chars().take(40).collect::<String>()
        ))
    };
    let ids = path
        .split('/')
        .map(|s| {
            if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) || s.starts_with('0') {
                Err(bad())
            } else {
                s.parse::<i64>().map_err(|_| bad())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() as i64 > MAX_CATEGORY_DEPTH + 1 {
        return Err(bad());
    }
    Ok(ids)
}

/// Path and depth of a new category `id` under `parent` (a root when `None`).
pub(crate) fn child_path(parent: Option<&Category>, id: i64) -> (String, i64) {
    match parent {
        Some(p) => (format!("{}/{id}", p.path), p.depth + 1),
        None => (id.to_string(), 0),
    }
}

/// The half-open range `[lo, hi)` holding exactly the strict descendants of `path`.
pub(crate) fn descendants_range(path: &str) -> (String, String) {
    (format!("{path}/"), format!("{path}0"))
}

/// Whether `path` is `ancestor` or below it.
pub(crate) fn is_within(path: &str, ancestor: &str) -> bool {
    path == ancestor || path.strip_prefix(ancestor).is_some_and(|rest| rest.starts_with('/'))
}

/// A planned subtree move: every path starting with `old_prefix` gets `new_prefix`
/// instead, and every depth in the subtree changes by `depth_delta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Move {
    pub(crate) old_prefix: String,
    pub(crate) new_prefix: String,
    pub(crate) depth_delta: i64,
}

impl Move {
    /// The path of a node of the moved subtree after the move.
    #[cfg(test)]
    pub(crate) fn rebase(&self, path: &str) -> Option<String> {
        is_within(path, &self.old_prefix).then(|| format!("{}{}", self.new_prefix, &path[self.old_prefix.len()..]))
    }
}

/// Plans moving `node` (with its subtree, `subtree_depth` levels below it) under
/// `new_parent` (to the top level when `None`).
pub(crate) fn plan_move(node: &Category, new_parent: Option<&Category>, subtree_depth: i64) -> Result<Move, Invalid> {
    if let Some(parent) = new_parent {
        if is_within(&parent.path, &node.path) {
            return Err(invalid(format!(
                "category {} cannot move under {}: that is inside its own subtree",
                node.id, parent.id
            )));
        }
    }
    let (new_prefix, new_depth) = child_path(new_parent, node.id);
    if new_depth + subtree_depth > MAX_CATEGORY_DEPTH {
        return Err(invalid(format!(
            "the move would make the tree deeper than {MAX_CATEGORY_DEPTH} levels"
        )));
    }
    Ok(Move {
        old_prefix: node.path.clone(),
        new_prefix,
        depth_delta: new_depth - node.depth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(id: i64, path: &str) -> Category {
        Category {
            id,
            name: format!("c{id}"),
            parent_id: None,
            path: path.into(),
            depth: path.split('/').count() as i64 - 1,
        }
    }

    #[test]
    fn paths_range_covers_exactly_the_subtree() {
        let (lo, hi) = descendants_range("1/4");
        for inside in ["1/4/28", "1/4/9/10"] {
            assert!(inside >= lo.as_str() && inside < hi.as_str() && is_within(inside, "1/4"));
        }
        for outside in ["1/4", "1/40", "1/45/2", "1/3/4", "2/1/4"] {
            assert!(!(outside >= lo.as_str() && outside < hi.as_str()), "{outside}");
        }
        assert!(is_within("1/4", "1/4") && !is_within("1/40", "1/4"));
        assert_eq!(parse_path("1/4/28").unwrap(), vec![1, 4, 28]);
        for bad in ["", "1//2", "a/1", "01/2", "1/", "-1"] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn moves_rebase_the_subtree_and_refuse_cycles_and_depth() {
        let node = cat(4, "1/4");
        let target = cat(7, "2/7");
        let m = plan_move(&node, Some(&target), 2).unwrap();
        assert_eq!(m.rebase("1/4/28").as_deref(), Some("2/7/4/28"));
        assert_eq!(m.rebase("1/40"), None);
        assert_eq!(m.depth_delta, 1);
        assert!(plan_move(&node, Some(&cat(9, "1/4/28/9")), 0).is_err());
        assert!(plan_move(&node, Some(&node), 0).is_err());
        let to_root = plan_move(&node, None, 0).unwrap();
        assert_eq!((to_root.new_prefix.as_str(), to_root.depth_delta), ("4", -1));
        assert!(plan_move(&node, Some(&target), MAX_CATEGORY_DEPTH).is_err());
    }
}
