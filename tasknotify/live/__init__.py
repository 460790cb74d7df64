"""The live streams: the brokers (in-process, Redis), the stream hub (SSE, Socket.IO), the rooms."""
