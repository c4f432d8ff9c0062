"""The language-modelling stream: a split as `batch_size` contiguous rows, read in windows.

Recurrent and memory models (SHA-RNN, SRU++, Transformer-XL-style memories, fast weights)
carry state from one window to the next, so the data must be laid out the way
truncated-BPTT language modelling always has been (Zaremba et al. 2014, awd-lstm-lm
`batchify`): the token stream is cut into `batch_size` contiguous rows, and window i+1 of
row r continues exactly where window i of row r stopped. The carried state is then the
true history of every row, with no shuffling anywhere.

Layout, for n tokens, B = batch_size rows and T = seq_len:

    L = (n - 1) // B                      inputs per row
    rows[r] = tokens[r*L : r*L + L + 1]   [B, L+1]; row r is the r-th contiguous 1/B of the
                                          split, and its last target is the first input of
                                          row r+1 (the boundary token is shared)
    window i: inputs  = rows[:, i*T   : i*T+T]
              targets = rows[:, i*T+1 : i*T+T+1]

The trailing n - 1 - B*L tokens (< B) are not targets of any row.

Evaluation reads `window(i)` for i < num_windows = ceil(L / T); the last window may be
partial and is padded (inputs/targets 0, weights 0), so summed over all windows the weights
count every target exactly once: B * L = `num_targets`. Training reads `train_window(step)`,
which cycles over the num_train_windows = L // T full windows only (no padding in a training
batch) and flags the first window of each pass so the trainer can reset carried state. It is
a pure function of `step`, so resuming from a checkpointed step gives the same batches.

Multi-host: the global rows are split over processes in contiguous blocks; process p reads
rows [p*B/P, (p+1)*B/P), which is its slice of the `P("data")`-sharded global batch.
"""

import numpy as np

from lmjax.errors import UserError


class LMStream:
    """A split as one long token stream cut into `batch_size` contiguous rows, read in windows
    of seq_len.

    Attributes:
      batch_size: B, global rows over all processes.
      seq_len: T, tokens per window.
      row_len: L, input tokens per row (each row also holds its final target).
      num_windows: windows per evaluation pass, ceil(L / T); the last may be partial.
      num_train_windows: full windows, L // T; training cycles over these.
      num_targets: B * L, the targets of the whole split (all processes).
      local_rows: (start, stop) of this process's block of global rows.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ):
        """Builds the [B, L+1] row view once; windows are slices of it.

        Args:
          tokens: [n] integer token ids (e.g. uint8 bytes); not copied when contiguous.
          batch_size: global number of rows B; must divide by process_count.
          seq_len: window length T.
          process_index, process_count: this host's index and the number of hosts.
        """
        tokens = np.ascontiguousarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be >= 1")
        if batch_size % process_count:
            raise UserError(
                f"batch_size={batch_size} does not divide into {process_count} processes; "
                f"use a multiple of {process_count}"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        row_len = (len(tokens) - 1) // batch_size
        if row_len < 1:
            raise UserError(
                f"{len(tokens)} tokens are too few for {batch_size} rows (need batch_size + 1)"
            )
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.row_len = row_len
        self.num_windows = -(-row_len // seq_len)
        self.num_train_windows = row_len // seq_len
        self.num_targets = batch_size * row_len
        per_process = batch_size // process_count
        start = process_index * per_process
        self.local_rows = (start, start + per_process)
        # Overlapping rows as a strided view: row r starts at token r*L and is L+1 long.
        step = tokens.strides[0]
        rows = np.lib.stride_tricks.as_strided(
            tokens[start * row_len :],
            shape=(per_process, row_len + 1),
            strides=(row_len * step, step),
            writeable=False,
        )
        self._rows = rows  # [b_local, L+1]

    def window(self, i: int) -> dict[str, np.ndarray]:
        """This process's rows of window i, 0 <= i < num_windows.

        Returns:
          {"inputs": [b_local, T] int32, "targets": [b_local, T] int32 (inputs shifted by one),
           "weights": [b_local, T] float32 (1 for real targets, 0 for the padded tail)}.
        """
        if not 0 <= i < self.num_windows:
            raise IndexError(f"window {i} not in [0, {self.num_windows})")
        t = self.seq_len
        lo = i * t
        width = min(t, self.row_len - lo)  # < t only in the last, partial window
        b = self._rows.shape[0]
        inputs = np.zeros((b, t), np.int32)
        targets = np.zeros((b, t), np.int32)
        weights = np.zeros((b, t), np.float32)
        inputs[:, :width] = self._rows[:, lo : lo + width]
        targets[:, :width] = self._rows[:, lo + 1 : lo + 1 + width]
        weights[:, :width] = 1.0
        return {"inputs": inputs, "targets": targets, "weights": weights}

    def train_window(self, step: int) -> tuple[dict[str, np.ndarray], bool]:
        """The training batch for `step`: full window step % num_train_windows, and whether it
        starts a new pass over the split (window 0), where carried state must be reset.
        """
        if self.num_train_windows == 0:
            raise UserError(
                f"rows of {self.row_len} tokens hold no full window of seq_len={self.seq_len}"
            )
        i = step % self.num_train_windows
        return self.window(i), i == 0
