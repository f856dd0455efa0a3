"""Capture: hooks in, typed records out."""

from headmine.capture.records import CaptureRecord as CaptureRecord
from headmine.capture.records import CaptureSpec as CaptureSpec
from headmine.capture.run import capture_reduce as capture_reduce
from headmine.capture.run import capturing as capturing
from headmine.capture.run import run_capture as run_capture
from headmine.capture.run import stream_pattern_layers as stream_pattern_layers
