// Package mosquitto holds no code: it is the home of the test that runs
// the shipped Mosquitto configuration (mosquitto.conf and acl in this
// folder) with a real broker, real client certificates and a real decryptd,
// and shows what the ACL allows and refuses.
package mosquitto
