//! The MOUNT v3 procedures (RFC 1813, appendix I): MNT hands out the root
//! handle of an export (or of a directory below one), the others keep and
//! show the informational list of mounts.

use std::net::IpAddr;

use nfs3_server::nfs3_types::mount::{
    dirpath, export_node, exports, fhandle3, mountbody, mountlist, mountres3, mountres3_ok,
    mountstat3, name, MNTPATHLEN,
};
use nfs3_server::nfs3_types::xdr_codec::{List, Opaque};

use super::wire::normalise_export_path;
use super::{Server, MAX_MOUNT_LIST, NAME_MAX};
use crate::nfs::access;
use crate::nfs::fs::{Cred, Exports, FileId, FileKind, FsError, MountError, NodeFs};
use crate::nfs::rpc::AUTH_SYS;

impl<E: Exports> Server<E> {
    /// MNT of an export, or of a directory below one (like knfsd; libnfs
    /// tools mount the directory of the file they open): the longest
    /// prefix the exports know is the export, the rest is looked up with
    /// the caller's credentials.
    pub(super) async fn proc_mnt(
        &self,
        path: &[u8],
        cred: &Cred,
        ip: IpAddr,
    ) -> mountres3<'static> {
        if path.len() > MNTPATHLEN {
            return mountres3::Err(mountstat3::MNT3ERR_NAMETOOLONG);
        }
        let Ok(path) = std::str::from_utf8(path) else {
            return mountres3::Err(mountstat3::MNT3ERR_NOENT);
        };
        let path = normalise_export_path(path);
        let mut export_path = path;
        let found = loop {
            match self.exports.mount(export_path, ip).await {
                Err(MountError::NoEntry) if export_path != "/" => {
                    export_path = match export_path.rfind('/') {
                        Some(0) | None => "/",
                        Some(i) => &export_path[..i],
                    };
                }
                other => break other,
            }
        };
        let result = match found {
            Ok((export, fs)) => {
                let rest = path[export_path.len()..].trim_start_matches('/');
                Self::walk(&*fs, fs.root(), rest, cred)
                    .await
                    .map(|id| (export, id))
            }
            Err(MountError::NoEntry) => Err(mountstat3::MNT3ERR_NOENT),
            Err(MountError::Access) => Err(mountstat3::MNT3ERR_ACCES),
            Err(MountError::Unavailable(why)) => {
                tracing::warn!("nfs: export {export_path} unavailable: {why}");
                Err(mountstat3::MNT3ERR_SERVERFAULT)
            }
        };
        match result {
            Ok((export, id)) => {
                let mut mounts = self.mounts.lock();
                if mounts.len() < MAX_MOUNT_LIST {
                    mounts.insert((ip, path.to_string()));
                }
                drop(mounts);
                tracing::info!("nfs: {ip} mounted {path}");
                mountres3::Ok(mountres3_ok {
                    fhandle: fhandle3(Opaque::owned(self.key.sign(export, id).to_vec())),
                    auth_flavors: vec![AUTH_SYS],
                })
            }
            Err(status) => {
                tracing::info!("nfs: {ip} may not mount {path}: {status}");
                mountres3::Err(status)
            }
        }
    }

    /// Look up the directory `rest` ("a/b", may be empty) below `id`.
    async fn walk(
        fs: &E::Fs,
        mut id: FileId,
        rest: &str,
        cred: &Cred,
    ) -> Result<FileId, mountstat3> {
        let err = |e: FsError| match e {
            FsError::NotFound | FsError::Stale => mountstat3::MNT3ERR_NOENT,
            FsError::NotDir => mountstat3::MNT3ERR_NOTDIR,
            FsError::Access | FsError::Perm => mountstat3::MNT3ERR_ACCES,
            FsError::NameTooLong => mountstat3::MNT3ERR_NAMETOOLONG,
            _ => mountstat3::MNT3ERR_IO,
        };
        for part in rest.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." || part.len() > NAME_MAX {
                return Err(mountstat3::MNT3ERR_INVAL);
            }
            let a = fs.getattr(id).await.map_err(err)?;
            access::check_lookup(&a, cred).map_err(err)?;
            id = fs.lookup(id, part.as_bytes()).await.map_err(err)?;
        }
        let a = fs.getattr(id).await.map_err(err)?;
        if a.kind != FileKind::Dir {
            return Err(mountstat3::MNT3ERR_NOTDIR);
        }
        Ok(id)
    }

    /// DUMP: the (client, path) pairs of MNT calls not yet unmounted.
    pub(super) fn proc_dump(&self) -> mountlist<'static, 'static> {
        let mounts = self.mounts.lock().clone();
        let list: Vec<mountbody> = mounts
            .iter()
            .map(|(host, path)| mountbody {
                ml_hostname: name(Opaque::owned(host.to_string().into_bytes())),
                ml_directory: dirpath(Opaque::owned(path.clone().into_bytes())),
            })
            .collect();
        List(list)
    }

    /// UMNT: forget one mount of this client (the handles stay valid).
    pub(super) fn proc_umnt(&self, path: &[u8], ip: IpAddr) {
        let path = String::from_utf8_lossy(path);
        self.mounts
            .lock()
            .remove(&(ip, normalise_export_path(&path).to_string()));
    }

    /// UMNTALL: forget every mount of this client.
    pub(super) fn proc_umntall(&self, ip: IpAddr) {
        self.mounts.lock().retain(|(host, _)| *host != ip);
    }

    /// EXPORT: every export path, with no group restrictions listed (who
    /// may mount is the exports' decision, made per client at MNT).
    pub(super) fn proc_export(&self) -> exports<'static, 'static> {
        let list: Vec<export_node> = self
            .exports
            .list()
            .into_iter()
            .map(|p| export_node {
                ex_dir: dirpath(Opaque::owned(p.into_bytes())),
                ex_groups: List(Vec::new()),
            })
            .collect();
        List(list)
    }
}
