//! Which cores the comparison's processes run on. On a small machine the scheduler may put
//! the measured proxy beside wrk and the backend in one run and apart from them in the
//! next, which moved a proxy's CPU per request by up to 2 × between runs of the same
//! build; so the proxy under test gets cores of its own and everything else the rest.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The proxy's cores and everyone else's, both non-empty.
pub struct Placement {
    proxy: Vec<usize>,
    rest: Vec<usize>,
}

impl Placement {
    /// The last `threads` of the cores this process may use for the proxy, the others for
    /// the rest; `None` when there are not more cores than `threads`.
    pub fn split(threads: usize) -> anyhow::Result<Option<Placement>> {
        let allowed = sched_getaffinity(Pid::from_raw(0))?;
        let cores: Vec<usize> = (0..CpuSet::count())
            .filter(|&c| allowed.is_set(c).unwrap_or(false))
            .collect();
        if threads == 0 || cores.len() <= threads {
            return Ok(None);
        }
        let (rest, proxy) = cores.split_at(cores.len() - threads);
        Ok(Some(Placement {
            proxy: proxy.to_vec(),
            rest: rest.to_vec(),
        }))
    }

    /// Moves the calling thread to the other cores, so that what it starts from now on
    /// (the backend, wrk, h2load) runs there.
    pub fn enter_rest(&self) -> anyhow::Result<()> {
        pin_this_thread(&self.rest)
    }

    /// Runs `start` on the proxy's cores, so that the processes it starts (and their
    /// threads and children) stay there, then moves this thread back to the others.
    pub fn on_proxy_cores<T>(
        &self,
        start: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        pin_this_thread(&self.proxy)?;
        let started = start();
        self.enter_rest()?;
        started
    }

    pub fn describe(&self) -> String {
        format!(
            "proxy on core(s) {:?}, load generator and backend on {:?}",
            self.proxy, self.rest
        )
    }
}

fn pin_this_thread(cores: &[usize]) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    for &c in cores {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_process_inherits_the_cores_it_was_started_on() {
        let Some(placement) = Placement::split(1).unwrap() else {
            return; // one core: nothing to split
        };
        let allowed = |pid: u32| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            status
                .lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .unwrap()
                .split(':')
                .nth(1)
                .unwrap()
                .trim()
                .to_string()
        };
        let mut child = placement
            .on_proxy_cores(|| Ok(std::process::Command::new("sleep").arg("5").spawn()?))
            .unwrap();
        let proxy_core = allowed(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(proxy_core, placement.proxy[0].to_string());
        let here = sched_getaffinity(Pid::from_raw(0)).unwrap();
        assert!(
            !here.is_set(placement.proxy[0]).unwrap(),
            "the caller is back on the other cores"
        );
        assert!(here.is_set(placement.rest[0]).unwrap());
    }
}
