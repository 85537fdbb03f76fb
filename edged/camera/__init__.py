"""Camera stills for the model: the ``look`` tool, automatic stills on wake or speech, and
``edgectl look`` (docs/camera.md).

* :mod:`~edged.camera.backend` - picamera2 (from apt on a Pi; CSI cameras and, through
  libcamera's UVC pipeline, USB webcams), imported lazily and used only from the camera thread;
* :mod:`~edged.camera.component` - :class:`Camera`, the component: its thread owns the device
  and its recovery loop (shared with the sound devices, :mod:`edged.devices`), the asyncio side
  takes stills on request and sends them to the Live session;
* :mod:`~edged.camera.policy` - pure decisions: may a still be taken now, and which events
  trigger an automatic one;
* :mod:`~edged.camera.tool` - the ``look`` tool the model calls;
* :mod:`~edged.camera.jpeg` - reading a JPEG's dimensions (what was sent, in status and answers).
"""
