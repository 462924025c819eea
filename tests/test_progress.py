"""The CLI progress bar: plain lines in logs, one redrawn line on a terminal."""

import io

from sepnets.progress import ProgressBar


def test_plain_lines_when_not_a_terminal():
  out = io.StringIO()
  bar = ProgressBar(4, stream=out, width=8, interactive=False)
  bar.note('calibrating')
  for name in 'abcd':
    bar.step(name)
  bar.close()
  lines = out.getvalue().splitlines()
  assert lines[0] == 'calibrating' and len(lines) == 5
  assert lines[1].startswith('[##......] 1/4 0:00  a')
  assert lines[4].startswith('[########] 4/4 ') and lines[4].endswith('  d') and ' < ' in lines[4]


def test_redraws_in_place_on_a_terminal():
  out = io.StringIO()
  bar = ProgressBar(2, stream=out, width=4, interactive=True)
  bar.step('first')
  bar.note('a message')
  bar.step('second')
  bar.close()
  text = out.getvalue()
  assert text.count('\r\033[K') == 3 and text.endswith('second\n')
  assert '\r\033[Ka message\n' in text


def test_update_counts_finished_steps_and_times_only_this_process():
  import io
  stream = io.StringIO()
  bar = ProgressBar(100, stream=stream, interactive=False, initial=40)
  bar.start -= 6.0  # 6 s in, 20 steps done since the resume at step 40
  bar.update(60, 'loss 1.0')
  line = stream.getvalue().strip()
  assert ' 60/100 0:06 < 0:12  loss 1.0' in line  # 40 steps left at 20 per 6 s
