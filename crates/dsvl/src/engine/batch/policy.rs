//! The scheduling policy, apart from any model: which waiting requests start between two decode
//! steps. Pure, so that it is tested on numbers alone.

/// Prompt tokens prefilled between two decode steps while other requests are running.
pub const DEFAULT_PREFILL_TOKENS_PER_STEP: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Sequences decoded together, at most.
    pub max_running: usize,
    /// While others are decoding, requests stop starting once this many prompt tokens were
    /// prefilled since the last decode step, so that a burst of long prompts delays the running
    /// streams by a bounded time. One request always starts when nothing runs, whatever its
    /// length.
    pub prefill_tokens_per_step: usize,
}

impl Policy {
    /// Whether one more waiting request may start now: `running` sequences (those started
    /// since the last step included) and `prefilled` prompt tokens started since the last step.
    pub fn may_start(&self, running: usize, prefilled: usize) -> bool {
        running < self.max_running.max(1)
            && (running == 0 || prefilled < self.prefill_tokens_per_step)
    }

    /// How many of `waiting` (prompt lengths, in queue order) start now, with `running`
    /// sequences decoding.
    pub fn starts(&self, mut running: usize, waiting: &[usize]) -> usize {
        let mut prefilled = 0;
        let mut n = 0;
        for &len in waiting {
            if !self.may_start(running, prefilled) {
                break;
            }
            prefilled += len;
            running += 1;
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy {
        max_running: 4,
        prefill_tokens_per_step: 4096,
    };

    #[test]
    fn admission_stops_at_the_token_budget_while_others_decode() {
        // One stream decoding: 3000 + 3000 tokens reach the budget, the third waits a step.
        assert_eq!(P.starts(1, &[3000, 3000, 3000]), 2);
        // Short prompts fill the free slots.
        assert_eq!(P.starts(1, &[10, 10, 10, 10]), 3);
    }

    #[test]
    fn an_idle_engine_starts_a_prompt_longer_than_the_budget() {
        assert_eq!(P.starts(0, &[20_000, 10]), 1);
        // With others running it also starts (the budget counts what was prefilled before it).
        assert_eq!(P.starts(2, &[20_000, 10]), 1);
    }

    #[test]
    fn a_full_running_set_starts_nothing() {
        assert_eq!(P.starts(4, &[1]), 0);
        assert_eq!(P.starts(3, &[1, 1]), 1);
        assert!(!P.may_start(4, 0));
    }

    #[test]
    fn long_prompts_do_not_starve_decoding_streams() {
        // A burst of eight 3000-token prompts behind one stream: each round between two decode
        // steps starts at most two, so the stream gets a step at least every ~6000 prompt
        // tokens instead of after all 24000.
        let mut waiting = vec![3000; 8];
        let mut running = 1;
        let mut rounds = 0;
        while !waiting.is_empty() && running < P.max_running {
            let n = P.starts(running, &waiting);
            assert!(n >= 1 && waiting[..n].iter().sum::<usize>() <= 4096 + 3000);
            waiting.drain(..n);
            running += n;
            rounds += 1;
        }
        assert_eq!(rounds, 2);
    }
}
