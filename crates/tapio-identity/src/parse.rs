//! Container id and pod UID from a cgroup path: pure string work, no I/O.
//!
//! Only layouts that Kubernetes (systemd and cgroupfs drivers) and plain Docker are known
//! to create are recognised. Anything else yields `None`: a wrong id in evidence is worse
//! than a missing one, so there is no "looks like an id" guessing.

/// What a cgroup path says about the workload that owns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathIdentity {
    /// 64 lowercase hex characters, as the runtime names the container.
    pub container_id: Option<String>,
    /// Dashed UUID form (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`), or the 32-hex form that
    /// the kubelet itself gives static pods (kept as is: that is their real UID).
    pub pod_uid: Option<String>,
}

/// Longer paths are not something a runtime creates; refusing them bounds the work.
const MAX_PATH_LEN: usize = 4096;

/// Container id and pod UID encoded in `path`, a cgroup path relative to its hierarchy
/// root (e.g. `/kubepods.slice/...`). Sub-cgroups below a Kubernetes container keep its
/// identity; below a plain Docker container, none: that container is their node.
pub fn parse_cgroup_path(path: &str) -> PathIdentity {
    if path.len() > MAX_PATH_LEN {
        return PathIdentity::default();
    }
    let Some(rest) = path.strip_prefix('/') else {
        return PathIdentity::default();
    };
    let segments: Vec<&str> = rest.split('/').collect();
    // Empty, "." or ".." segments never come from the kernel; refuse rather than normalise.
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return PathIdentity::default();
    }
    systemd_kubepods(&segments)
        .or_else(|| cgroupfs_kubepods(&segments))
        .or_else(|| plain_docker(&segments))
        .unwrap_or_default()
}

/// systemd driver: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/<runtime>-<id>.scope`.
/// The slice chain must start at the hierarchy root and each slice must be named after its
/// parent (systemd's rule), which also admits a kubelet cgroup root such as
/// `kubelet.slice/kubelet-kubepods.slice` and nothing hidden deeper inside other units.
fn systemd_kubepods(segments: &[&str]) -> Option<PathIdentity> {
    let mut parent: Option<&str> = None;
    let mut next = 0;
    let kubepods = loop {
        let name = segments.get(next)?.strip_suffix(".slice")?;
        if !is_child_slice(parent, name) {
            return None;
        }
        next += 1;
        parent = Some(name);
        if name == "kubepods" || name.ends_with("-kubepods") {
            break name;
        }
    };

    let mut rest = segments.get(next..).unwrap_or_default().iter().copied();
    let Some(first) = rest.next() else {
        return Some(PathIdentity::default());
    };
    let pod_slice = match child_slice_component(kubepods, first) {
        Some("burstable" | "besteffort") => {
            let qos = first.strip_suffix(".slice")?;
            let Some(pod) = rest.next() else {
                return Some(PathIdentity::default());
            };
            child_slice_component(qos, pod)
        }
        other => other,
    };
    let Some(pod_uid) = pod_slice.and_then(|c| c.strip_prefix("pod")).and_then(|raw| pod_uid(raw, b'_')) else {
        return Some(PathIdentity::default());
    };
    let container_id = rest.next().and_then(systemd_container_id);
    Some(PathIdentity { container_id, pod_uid: Some(pod_uid) })
}

/// cgroupfs driver: `kubepods[/<qos>]/pod<uid>/<id>` at the hierarchy root.
fn cgroupfs_kubepods(segments: &[&str]) -> Option<PathIdentity> {
    let (first, rest) = segments.split_first()?;
    if *first != "kubepods" {
        return None;
    }
    let mut rest = rest.iter().copied();
    let pod_segment = match rest.next() {
        Some("burstable" | "besteffort") => rest.next(),
        other => other,
    };
    let Some(pod_uid) = pod_segment.and_then(|s| s.strip_prefix("pod")).and_then(|raw| pod_uid(raw, b'-')) else {
        return Some(PathIdentity::default());
    };
    // containerd and dockershim name the cgroup after the bare id; CRI-O prefixes "crio-"
    // (and "crio-conmon-" for its monitor, which then fails the hex check).
    let container_id = rest.next().and_then(|s| container_hex(s.strip_prefix("crio-").unwrap_or(s)));
    Some(PathIdentity { container_id, pod_uid: Some(pod_uid) })
}

/// Docker without Kubernetes: `/docker/<id>` (cgroupfs) or `/system.slice/docker-<id>.scope`,
/// the container's own cgroup only. Cgroups below it are made by what runs inside (systemd,
/// the kubelet of a kind or k3d node, another runtime): the Docker container is their node,
/// and naming it would name one container for all of their workloads.
fn plain_docker(segments: &[&str]) -> Option<PathIdentity> {
    let container_id = match segments {
        ["docker", id] => container_hex(id),
        ["system.slice", scope] => container_hex(scope.strip_prefix("docker-")?.strip_suffix(".scope")?),
        _ => None,
    }?;
    Some(PathIdentity { container_id: Some(container_id), pod_uid: None })
}

/// Whether slice `name` (without ".slice") is a valid child of slice `parent`.
fn is_child_slice(parent: Option<&str>, name: &str) -> bool {
    match parent {
        None => !name.is_empty() && !name.contains('-'),
        Some(parent) => child_component(parent, name).is_some(),
    }
}

/// The component a child slice unit adds to its parent's name: `<parent>-<c>.slice` → `c`.
fn child_slice_component<'a>(parent: &str, unit: &'a str) -> Option<&'a str> {
    child_component(parent, unit.strip_suffix(".slice")?)
}

fn child_component<'a>(parent: &str, name: &'a str) -> Option<&'a str> {
    let component = name.strip_prefix(parent)?.strip_prefix('-')?;
    (!component.is_empty() && !component.contains('-')).then_some(component)
}

/// Container id from a systemd scope unit name: `cri-containerd-`, `crio-` or `docker-`
/// followed by the id. `crio-conmon-<id>.scope` is CRI-O's monitor process, not the
/// container, and is rejected because "conmon-<id>" is not a hex id.
fn systemd_container_id(unit: &str) -> Option<String> {
    let name = unit.strip_suffix(".scope")?;
    ["cri-containerd-", "crio-", "docker-"].iter().find_map(|prefix| name.strip_prefix(prefix)).and_then(container_hex)
}

/// Exactly 64 lowercase hex characters: what containerd, CRI-O and Docker all use.
/// Short (12-char) ids are display abbreviations and are never accepted.
fn container_hex(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then(|| s.to_owned())
}

/// A pod UID as written in a cgroup name, with `sep` between the UUID groups (`_` under
/// systemd, where `-` separates slice levels; `-` under cgroupfs), normalised to dashes.
fn pod_uid(raw: &str, sep: u8) -> Option<String> {
    let bytes = raw.as_bytes();
    if bytes.len() == 32 && bytes.iter().all(u8::is_ascii_hexdigit) {
        return Some(raw.to_owned());
    }
    if bytes.len() != 36 {
        return None;
    }
    let mut uid = String::with_capacity(36);
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b != sep {
                return None;
            }
            uid.push('-');
        } else if b.is_ascii_hexdigit() {
            uid.push(char::from(b));
        } else {
            return None;
        }
    }
    Some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1b2c3d4e-5f60-4718-89ab-cdef01234567";
    const UID_US: &str = "1b2c3d4e_5f60_4718_89ab_cdef01234567";

    fn both(path: &str) -> (Option<String>, Option<String>) {
        let id = parse_cgroup_path(path);
        (id.container_id, id.pod_uid)
    }

    fn full() -> (Option<String>, Option<String>) {
        (Some(CID.to_owned()), Some(UID.to_owned()))
    }

    fn pod_only() -> (Option<String>, Option<String>) {
        (None, Some(UID.to_owned()))
    }

    const NOTHING: (Option<String>, Option<String>) = (None, None);

    #[test]
    fn systemd_burstable_containerd() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(both(&p), full());
    }

    #[test]
    fn systemd_besteffort_crio() {
        let p =
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-{CID}.scope");
        assert_eq!(both(&p), full());
    }

    #[test]
    fn systemd_crio_conmon_is_not_the_container() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-conmon-{CID}.scope"
        );
        assert_eq!(both(&p), pod_only());
    }

    #[test]
    fn systemd_docker_scope() {
        let p =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/docker-{CID}.scope");
        assert_eq!(both(&p), full());
    }

    #[test]
    fn systemd_guaranteed_pod_directly_under_kubepods() {
        let p = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope");
        assert_eq!(both(&p), full());
    }

    #[test]
    fn systemd_pod_slice_without_container() {
        let p = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice");
        assert_eq!(both(&p), pod_only());
        let p = format!("/kubepods.slice/kubepods-pod{UID_US}.slice");
        assert_eq!(both(&p), pod_only());
    }

    #[test]
    fn systemd_nested_below_container_scope() {
        let p = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope/init.scope/deeper");
        assert_eq!(both(&p), full());
    }

    #[test]
    fn systemd_unknown_unit_below_pod_keeps_pod_only() {
        let p = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/something-else.scope");
        assert_eq!(both(&p), pod_only());
    }

    #[test]
    fn systemd_kubelet_cgroup_root_slice() {
        // kind-style nodes: the kubelet's cgroup root is itself a slice.
        let p = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(both(&p), full());
    }

    #[test]
    fn systemd_slice_levels_without_pod() {
        assert_eq!(both("/kubepods.slice"), NOTHING);
        assert_eq!(both("/kubepods.slice/kubepods-burstable.slice"), NOTHING);
        assert_eq!(both("/kubepods.slice/kubepods-besteffort.slice"), NOTHING);
    }

    #[test]
    fn systemd_broken_slice_chain_is_rejected() {
        // QoS of the pod slice does not match its parent slice.
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(both(&p), NOTHING);
        // Pod slice named as if it were in a QoS slice, placed directly under kubepods.
        let p = format!("/kubepods.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope");
        assert_eq!(both(&p), NOTHING);
        // kubepods hidden inside some other unit is not the kubelet's tree.
        let p =
            format!("/system.slice/foo.service/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope");
        assert_eq!(both(&p), NOTHING);
        let p = format!("/user.slice/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope");
        assert_eq!(both(&p), NOTHING);
    }

    #[test]
    fn systemd_uid_must_use_underscores() {
        // Dashes inside a slice component would be slice separators, so this is not a pod.
        let p = format!("/kubepods.slice/kubepods-pod{UID}.slice/cri-containerd-{CID}.scope");
        assert_eq!(both(&p), NOTHING);
    }

    #[test]
    fn cgroupfs_burstable_and_besteffort() {
        assert_eq!(both(&format!("/kubepods/burstable/pod{UID}/{CID}")), full());
        assert_eq!(both(&format!("/kubepods/besteffort/pod{UID}/{CID}")), full());
    }

    #[test]
    fn cgroupfs_guaranteed() {
        assert_eq!(both(&format!("/kubepods/pod{UID}/{CID}")), full());
    }

    #[test]
    fn cgroupfs_crio_and_conmon() {
        assert_eq!(both(&format!("/kubepods/burstable/pod{UID}/crio-{CID}")), full());
        assert_eq!(both(&format!("/kubepods/burstable/pod{UID}/crio-conmon-{CID}")), pod_only());
    }

    #[test]
    fn cgroupfs_nested_and_pod_level() {
        assert_eq!(both(&format!("/kubepods/pod{UID}/{CID}/sub/cg")), full());
        assert_eq!(both(&format!("/kubepods/burstable/pod{UID}")), pod_only());
        assert_eq!(both("/kubepods"), NOTHING);
        assert_eq!(both("/kubepods/burstable"), NOTHING);
    }

    #[test]
    fn cgroupfs_uid_must_use_dashes() {
        assert_eq!(both(&format!("/kubepods/pod{UID_US}/{CID}")), NOTHING);
    }

    #[test]
    fn cgroupfs_not_at_root_is_rejected() {
        assert_eq!(both(&format!("/foo/kubepods/pod{UID}/{CID}")), NOTHING);
    }

    #[test]
    fn static_pod_uid_is_kept_as_32_hex() {
        let hash = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
        assert_eq!(
            both(&format!("/kubepods/burstable/pod{hash}/{CID}")),
            (Some(CID.to_owned()), Some(hash.to_owned()))
        );
        assert_eq!(
            both(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice")),
            (None, Some(hash.to_owned()))
        );
    }

    #[test]
    fn plain_docker_layouts() {
        let only_cid = (Some(CID.to_owned()), None);
        assert_eq!(both(&format!("/docker/{CID}")), only_cid);
        assert_eq!(both(&format!("/system.slice/docker-{CID}.scope")), only_cid);
        assert_eq!(both("/system.slice/docker.service"), NOTHING);
        assert_eq!(both("/docker"), NOTHING);
    }

    /// A kind or k3d node is a Docker container and its kubelet's pods are below it: as
    /// the host sees them, and as an agent in a node with the host's cgroup namespace (kind
    /// on cgroup v1) sees them. The node is not the pods' container.
    #[test]
    fn cgroups_made_inside_a_docker_container_are_not_named_after_it() {
        let node = "fe".repeat(32);
        for p in [
            format!("/docker/{node}/kubelet/kubepods/burstable/pod{UID}/{CID}"),
            format!("/docker/{node}/kubelet/kubepods/burstable/pod{UID}"),
            format!("/docker/{node}/kubepods/besteffort/pod{UID}/{CID}"),
            format!("/docker/{node}/kubepods/pod{UID}/{CID}/sub"),
            format!("/system.slice/docker-{node}.scope/kubepods/burstable/pod{UID}/{CID}"),
            format!(
                "/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"
            ),
            format!("/system.slice/docker-{node}.scope/kubepods.slice/kubepods-pod{UID_US}.slice/crio-{CID}.scope/container"),
            // Docker in Docker, and CRI-O's monitor of a nested container.
            format!("/docker/{node}/docker/{CID}"),
            format!("/system.slice/docker-{node}.scope/system.slice/docker-{CID}.scope"),
            format!("/system.slice/docker-{node}.scope/crio-conmon-{CID}.scope"),
        ] {
            assert_eq!(both(&p), NOTHING, "{p}");
        }
        // Nor is any other cgroup made inside it: systemd's units in a kind node, a nested
        // runtime's own service, a kubelet's cgroup root before its pods exist.
        for p in [
            format!("/docker/{node}/system.slice/containerd.service"),
            format!("/system.slice/docker-{node}.scope/init.scope"),
            format!("/system.slice/docker-{node}.scope/kubelet.slice"),
            format!("/docker/{node}/nested"),
        ] {
            assert_eq!(both(&p), NOTHING, "{p}");
        }
        // The node's own cgroup is the node container.
        assert_eq!(both(&format!("/docker/{node}")), (Some(node.clone()), None));
    }

    /// Only 64 lowercase hex characters are an id, in every layout that carries one.
    #[test]
    fn ids_of_the_wrong_length_or_case_are_refused_in_every_layout() {
        let layouts = [
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-ID.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{UID_US}.slice/crio-ID.scope"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/docker-ID.scope"),
            format!("/kubepods/burstable/pod{UID}/ID"),
            format!("/kubepods/pod{UID}/crio-ID"),
        ];
        for layout in &layouts {
            assert_eq!(both(&layout.replace("ID", CID)), full(), "{layout}");
            for bad in [&CID[..63], &format!("{CID}0"), &CID.to_uppercase(), &format!("{}A", &CID[..63])] {
                assert_eq!(both(&layout.replace("ID", bad)), pod_only(), "{layout} {bad}");
            }
        }
        for docker in ["/docker/ID", "/system.slice/docker-ID.scope"] {
            assert_eq!(both(&docker.replace("ID", CID)), (Some(CID.to_owned()), None));
            for bad in [&CID[..63], &format!("{CID}0"), &CID.to_uppercase()] {
                assert_eq!(both(&docker.replace("ID", bad)), NOTHING, "{docker} {bad}");
            }
        }
    }

    #[test]
    fn crio_runc_container_subcgroup_keeps_the_container() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-{CID}.scope/container"
        );
        assert_eq!(both(&p), full());
    }

    /// Podman, nerdctl and systemd-nspawn layouts are not known: unnamed, and a monitor
    /// (conmon) is never taken for its container.
    #[test]
    fn runtimes_outside_the_known_layouts_are_unnamed() {
        for p in [
            format!("/machine.slice/libpod-{CID}.scope"),
            format!("/machine.slice/libpod-{CID}.scope/container"),
            format!("/machine.slice/libpod-conmon-{CID}.scope"),
            format!("/libpod_parent/libpod-{CID}"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope"),
            format!("/system.slice/nerdctl-{CID}.scope"),
            format!("/default/{CID}"),
            format!("/machine.slice/machine-kind.scope/payload/kubepods/pod{UID}/{CID}"),
            format!("/system.slice/crio-{CID}.scope"),
            format!("/system.slice/docker-conmon-{CID}.scope"),
        ] {
            assert_eq!(both(&p), NOTHING, "{p}");
        }
    }

    #[test]
    fn malformed_pod_uids_are_rejected_under_systemd_too() {
        for bad in [
            "1b2c3d4e_5f60_4718_89ab_cdef0123456",
            "1b2c3d4e_5f60_4718_89ab_cdef012345678",
            "1b2c3d4e5_f60_4718_89ab_cdef01234567",
            "1b2c3d4e_5f60_4718_89ab_cdef0123456z",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f",
        ] {
            let p = format!("/kubepods.slice/kubepods-pod{bad}.slice/cri-containerd-{CID}.scope");
            assert_eq!(both(&p), NOTHING, "{bad}");
        }
    }

    #[test]
    fn v1_hierarchy_paths_parse_the_same() {
        // A v1 hierarchy (e.g. memory) mirrors the same relative paths.
        assert_eq!(both(&format!("/kubepods/burstable/pod{UID}/{CID}")), full());
    }

    #[test]
    fn short_or_non_hex_ids_are_not_container_ids() {
        let short = &CID[..12];
        assert_eq!(both(&format!("/docker/{short}")), NOTHING);
        assert_eq!(both(&format!("/kubepods/pod{UID}/{short}")), pod_only());
        let upper = CID.to_uppercase();
        assert_eq!(both(&format!("/docker/{upper}")), NOTHING);
        let non_hex = format!("{}g", &CID[..63]);
        assert_eq!(both(&format!("/docker/{non_hex}")), NOTHING);
        let long = format!("{CID}0");
        assert_eq!(both(&format!("/docker/{long}")), NOTHING);
        let p = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{short}.scope");
        assert_eq!(both(&p), pod_only());
        let p = format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}");
        assert_eq!(both(&p), pod_only());
    }

    #[test]
    fn malformed_pod_uids_are_rejected() {
        for bad in [
            "1b2c3d4e-5f60-4718-89ab-cdef0123456",   // too short
            "1b2c3d4e-5f60-4718-89ab-cdef012345678", // too long
            "1b2c3d4e5-f60-4718-89ab-cdef01234567",  // dash in the wrong place
            "1b2c3d4e-5f60-4718-89ab-cdef0123456z",  // not hex
            "",
        ] {
            assert_eq!(both(&format!("/kubepods/pod{bad}/{CID}")), NOTHING, "{bad}");
        }
    }

    #[test]
    fn hostile_and_unrelated_strings() {
        for p in [
            "",
            "/",
            "//",
            "kubepods/pod/x",
            "/init.scope",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/containerd.service",
            "/../kubepods/pod",
            "/kubepods/./burstable",
            "/kubepods.slice/",
            "/kubepods.slice//kubepods-pod.slice",
            "/kubepods.slice/kubepods-.slice",
            "/-.slice/-kubepods.slice",
            "/kubepods\0/pod",
            "/\u{1F600}.slice/\u{1F600}-kubepods.slice/\u{1F600}-kubepods-pod.slice",
        ] {
            assert_eq!(both(p), NOTHING, "{p:?}");
        }
        // Relative form of a valid path: the kernel never reports one.
        assert_eq!(both(&format!("kubepods/pod{UID}/{CID}")), NOTHING);
        // Trailing slash and doubled slashes are not kernel output either.
        assert_eq!(both(&format!("/kubepods/pod{UID}/{CID}/")), NOTHING);
        assert_eq!(both(&format!("/kubepods//pod{UID}/{CID}")), NOTHING);
        // Oversized input is refused without being scanned.
        let huge = format!("/kubepods/pod{UID}/{CID}/{}", "a/".repeat(4096));
        assert_eq!(both(&huge), NOTHING);
    }
}
