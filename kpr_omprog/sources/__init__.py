"""Front ends that feed the assembler: rsyslog omprog, a UDP socket, capture files."""
