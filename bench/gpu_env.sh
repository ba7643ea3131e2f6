# Sourced by the GPU-machine scripts (gpu_session.sh, gpu_pipeline.sh) with $out set: installs the carried
# wheels (.gpu/: mamba-ssm, causal-conv1d; .whl/: anything else missing there) into a private site,
# points Python at it and at the checkout, keeps Triton's cache and autotune results for the whole
# session, and records the card in $out/card.txt. `pack_out KEEP ARCHIVE` packs $out for the way back.
site=/tmp/kotomamba-site
wheels=$(compgen -G ".gpu/*.whl"; compgen -G ".whl/*.whl")
if [ -n "$wheels" ]; then
  # Once per machine: a second script started alongside must not reinstall under a running one.
  if [ ! -f "$site/.installed" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" $wheels 2>&1 | tail -2 \
      && touch "$site/.installed"
  fi
  export PYTHONPATH="$site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/kotomamba-triton TRITON_CACHE_AUTOTUNING=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/card.txt"

# Everything in $out but the file KEEP into $out/ARCHIVE (few files come back from a GPU machine).
pack_out() {
  local archive
  archive=$(mktemp --suffix .tar.gz)
  tar -czf "$archive" -C "$out" --exclude "./$1" . && find "$out" -mindepth 1 -not -name "$1" -delete \
    && mv "$archive" "$out/$2"
}
