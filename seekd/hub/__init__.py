"""From a bare machine to the right DeepSeek: `seekd pull`, the model store, `seekd doctor`.

Why our own small client over httpx rather than `huggingface_hub` (installable here, 2.5.0) and
`modelscope`: `huggingface_hub` does the layout, resumption, parallelism and endpoints well, but it
never checks a download's sha256 against the hub's LFS metadata (it only names blobs by it), its
free-disk check only warns, its progress is one tqdm bar per file, and it reads HF_ENDPOINT once at
import. `modelscope` pulls in a large dependency tree (requests, oss2, datasets helpers) for two REST
calls. Both hubs need only "list the files of a revision" and "GET a file with a Range", so one
client (`download.py`) serves both API shapes (`sources.py`), verifies every byte, and keeps the
Hugging Face cache layout (`store.py`) so models pulled by other tools are found and ours are usable
by them. Nothing here is imported by the engine or the server.

Modules: `store` (cache layout, list, remove, resolve), `sources` (the two hubs' API shapes and
errors), `download` (one file: resume, verify), `pull` (a repo: plan, disk check, parallel fetch,
snapshot), `aliases` (short names of the DeepSeek family), `probes` (hardware boundary), `gpus` (GPU
kinds and `--gpus` specs), `sizing` (memory per GPU of a TP x PP x EP layout, from the model planner
and the engine's KV layout), `recommend` (what fits), `doctor` (the report), `plan` and
`plan_report` (`seekd plan`),
`resolve` (`--model` as a repository id or alias), `cli`.
"""
