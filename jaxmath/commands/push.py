"""`jaxmath push`: upload a HF export or a PEFT adapter directory to the Hugging Face Hub with a model card."""
from __future__ import annotations

import argparse
import contextlib
import sys

from jaxmath.commands.options import add_quiet_argument
from jaxmath.progress import configure_logging


def push_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Upload a HF export (or a PEFT adapter directory) to the Hugging Face Hub with a generated model card."""
    parser = argparse.ArgumentParser(prog=prog, description=push_main.__doc__)
    parser.add_argument("--model", required=True, help="HF export directory (e.g. runs/x/hf) or PEFT adapter "
                                                       "directory (runs/x/hf_adapter)")
    parser.add_argument("--repo", required=True, help="Hub repository id, user/name (created if absent)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--run-dir", default=None,
                        help="training run whose config and results go into the card (default: the export's "
                             "parent when it holds config.yaml)")
    parser.add_argument("--token", default=None, help="Hub token (default: $HF_TOKEN or `hf auth login`)")
    parser.add_argument("--dry-run", action="store_true", help="print the files and the model card; upload nothing")
    add_quiet_argument(parser)
    args = parser.parse_args(argv)
    configure_logging(args.quiet)
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import disable_progress_bars

    from jaxmath.train.publish import PublishError, check_repo_id, model_card, push_to_hub, upload_files

    try:
        if args.dry_run:
            check_repo_id(args.repo)
            files = upload_files(args.model)
            print(model_card(args.model, args.repo, args.run_dir))
            print(f"--- would upload to {args.repo}: {', '.join(files)}, README.md")
            return 0
        with disable_progress_bars() if args.quiet else contextlib.nullcontext():  # the upload's own bars
            print(f"pushed: {push_to_hub(args.model, args.repo, args.private, args.run_dir, args.token)}")
    except (PublishError, ValueError, OSError, HfHubHTTPError) as err:  # OSError: also offline mode
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
