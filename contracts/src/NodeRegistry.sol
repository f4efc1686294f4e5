// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title Registry of inference nodes and verifiers: endpoint, stake, attestation, liveness.
/// @dev Stake is held here. It leaves only through an unbonding delay, so a node that
/// misbehaved can still be slashed (by the settlement contract, holding SLASHER_ROLE) after
/// it asks to leave; and never while a batch it submitted is still open (the settlement
/// contract locks the stake per open batch), so stake backing an open batch stays slashable
/// until that batch is final.
/// A registration (and any later change of attestation or endpoint) carries the signatures of a
/// quorum of active verifiers over an EIP-712 `Registration`: each checked the node's TEE
/// evidence, that it binds the node's key, that its measurement is approved, and that its
/// endpoint is a public address. A node counts as active only
/// while its measurement stays approved for its role, so revoking a measurement retires every
/// node running it.
contract NodeRegistry is EIP712, AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;

    enum Role {
        None,
        Inference,
        Verifier
    }

    struct Node {
        Role role;
        bool enabled;
        uint64 registeredAt;
        uint64 lastHeartbeat;
        uint64 unbondingEnds;
        uint256 stake;
        uint256 unbonding;
        bytes32 attestationDigest;
        bytes32 measurement;
        string endpoint;
    }

    bytes32 public constant GOVERNOR_ROLE = keccak256("GOVERNOR_ROLE");
    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");
    bytes32 public constant REGISTRATION_TYPEHASH = keccak256(
        "Registration(address node,uint8 role,string endpoint,bytes32 measurement,bytes32 evidenceDigest,uint64 deadline)"
    );

    IERC20 public immutable stakeToken;
    /// Minimum active stake per role, in token units.
    mapping(Role role => uint256) public minStake;
    /// Seconds between an unbond request and the withdrawal.
    uint64 public unbondingDelay;
    /// A node whose last heartbeat is older than this is not active; 0 disables the check.
    uint64 public heartbeatTimeout;

    /// Verifier signatures a registration needs; 0 while the first verifiers are admitted.
    uint16 public registrationQuorum;
    /// Measurements (code identities) governance approves per role.
    mapping(Role role => mapping(bytes32 measurement => bool)) public approvedMeasurement;

    /// Execution profiles (hashes) governance says the network can re-execute; verifiers attest
    /// only batches whose receipts run on one of them.
    mapping(bytes32 profileHash => bool) public approvedProfile;
    /// The execution profiles each verifier re-executes on (declared by the verifier: a tensor
    /// engine's and a language-model engine's, say).
    mapping(address verifier => mapping(bytes32 profileHash => bool)) public verifiesProfile;
    /// Batches of a node still open (submitted or attested, not final): its stake stays put.
    mapping(address node => uint256) public openBatches;

    mapping(address node => Node) private _nodes;
    address[] private _all;

    error AlreadyRegistered(address node);
    error NotRegistered(address node);
    error InvalidRole();
    error StakeTooLow(uint256 stake, uint256 required);
    error ZeroAmount();
    error InsufficientStake(uint256 stake, uint256 requested);
    error UnbondingNotOver(uint64 endsAt);
    error NothingUnbonding();
    error MeasurementNotApproved(Role role, bytes32 measurement);
    error RegistrationExpired(uint64 deadline);
    error QuorumNotMet(uint256 signers, uint256 quorum);
    error SignersNotAscending();
    error NotActiveVerifier(address signer);
    error StakeLocked(uint256 openBatches);
    error NotAVerifier(address node);

    event NodeRegistered(address indexed node, Role role, string endpoint, uint256 stake);
    event StakeAdded(address indexed node, uint256 amount, uint256 stake);
    event UnbondRequested(address indexed node, uint256 amount, uint64 endsAt);
    event UnbondWithdrawn(address indexed node, uint256 amount);
    event Heartbeat(address indexed node, uint64 timestamp);
    event EndpointUpdated(address indexed node, string endpoint);
    event AttestationUpdated(address indexed node, bytes32 digest, bytes32 measurement);
    event NodeEnabled(address indexed node, bool enabled);
    event Slashed(address indexed node, uint256 amount, address indexed to);
    event MinStakeSet(Role role, uint256 amount);
    event UnbondingDelaySet(uint64 delay);
    event HeartbeatTimeoutSet(uint64 timeout);
    event MeasurementSet(Role role, bytes32 measurement, bool approved);
    event RegistrationQuorumSet(uint16 quorum);
    event ProfileSet(bytes32 profileHash, bool approved);
    event VerifierProfileDeclared(address indexed verifier, bytes32 profileHash, bool declared);
    event StakeLockChanged(address indexed node, uint256 openBatches);

    constructor(
        IERC20 stakeToken_,
        address governor,
        uint256 minInferenceStake,
        uint256 minVerifierStake,
        uint64 unbondingDelay_
    ) EIP712("CairnRegistry", "1") {
        stakeToken = stakeToken_;
        _grantRole(DEFAULT_ADMIN_ROLE, governor);
        _grantRole(GOVERNOR_ROLE, governor);
        minStake[Role.Inference] = minInferenceStake;
        minStake[Role.Verifier] = minVerifierStake;
        unbondingDelay = unbondingDelay_;
    }

    // ---- nodes ----

    /// @notice Registers the caller in `role`, pulling `stake` tokens (approve first).
    /// `verifierSignatures`: at least `registrationQuorum` distinct active verifiers (ascending
    /// addresses) signing the EIP-712 `Registration` of exactly these values before `deadline`.
    function register(
        Role role,
        string calldata endpoint,
        uint256 stake,
        bytes32 attestationDigest,
        bytes32 measurement,
        uint64 deadline,
        bytes[] calldata verifierSignatures
    ) external nonReentrant {
        if (role == Role.None) revert InvalidRole();
        Node storage n = _nodes[msg.sender];
        if (n.role != Role.None) revert AlreadyRegistered(msg.sender);
        if (stake < minStake[role]) revert StakeTooLow(stake, minStake[role]);
        _checkRegistration(msg.sender, role, endpoint, measurement, attestationDigest, deadline, verifierSignatures);
        n.role = role;
        n.enabled = true;
        n.registeredAt = uint64(block.timestamp);
        n.lastHeartbeat = uint64(block.timestamp);
        n.stake = stake;
        n.attestationDigest = attestationDigest;
        n.measurement = measurement;
        n.endpoint = endpoint;
        _all.push(msg.sender);
        emit NodeRegistered(msg.sender, role, endpoint, stake);
        emit AttestationUpdated(msg.sender, attestationDigest, measurement);
        stakeToken.safeTransferFrom(msg.sender, address(this), stake);
    }

    /// @notice Adds `amount` to the caller's active stake.
    function addStake(uint256 amount) external nonReentrant {
        Node storage n = _registered(msg.sender);
        if (amount == 0) revert ZeroAmount();
        n.stake += amount;
        emit StakeAdded(msg.sender, amount, n.stake);
        stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Moves `amount` of active stake into unbonding; it can leave after the delay.
    /// A second request adds to the pending amount and restarts the delay.
    function requestUnbond(uint256 amount) external {
        Node storage n = _registered(msg.sender);
        if (amount == 0) revert ZeroAmount();
        if (amount > n.stake) revert InsufficientStake(n.stake, amount);
        n.stake -= amount;
        n.unbonding += amount;
        n.unbondingEnds = uint64(block.timestamp) + unbondingDelay;
        emit UnbondRequested(msg.sender, amount, n.unbondingEnds);
    }

    /// @notice Pays out the caller's unbonded stake once the delay has passed and no batch the
    /// caller submitted is still open.
    function withdrawUnbonded() external nonReentrant {
        Node storage n = _registered(msg.sender);
        uint256 amount = n.unbonding;
        if (amount == 0) revert NothingUnbonding();
        if (block.timestamp < n.unbondingEnds) revert UnbondingNotOver(n.unbondingEnds);
        if (openBatches[msg.sender] > 0) revert StakeLocked(openBatches[msg.sender]);
        n.unbonding = 0;
        emit UnbondWithdrawn(msg.sender, amount);
        stakeToken.safeTransfer(msg.sender, amount);
    }

    /// @notice Records that the caller is alive.
    function heartbeat() external {
        Node storage n = _registered(msg.sender);
        n.lastHeartbeat = uint64(block.timestamp);
        emit Heartbeat(msg.sender, n.lastHeartbeat);
    }

    /// @notice Moves the caller to a new endpoint with (possibly fresh) evidence, approved by a
    /// verifier quorum exactly as at registration, so verifiers never follow a node to an
    /// address no quorum checked.
    function setEndpoint(
        string calldata endpoint,
        bytes32 attestationDigest,
        bytes32 measurement,
        uint64 deadline,
        bytes[] calldata verifierSignatures
    ) external {
        Node storage n = _registered(msg.sender);
        _checkRegistration(msg.sender, n.role, endpoint, measurement, attestationDigest, deadline, verifierSignatures);
        n.endpoint = endpoint;
        n.attestationDigest = attestationDigest;
        n.measurement = measurement;
        emit EndpointUpdated(msg.sender, endpoint);
        emit AttestationUpdated(msg.sender, attestationDigest, measurement);
    }

    /// @notice Declares an execution profile (hash) this verifier re-executes on (one of several).
    function declareProfile(bytes32 profileHash) external {
        Node storage n = _registered(msg.sender);
        if (n.role != Role.Verifier) revert NotAVerifier(msg.sender);
        verifiesProfile[msg.sender][profileHash] = true;
        emit VerifierProfileDeclared(msg.sender, profileHash, true);
    }

    /// @notice Withdraws a profile this verifier declared.
    function withdrawProfile(bytes32 profileHash) external {
        verifiesProfile[msg.sender][profileHash] = false;
        emit VerifierProfileDeclared(msg.sender, profileHash, false);
    }

    /// @notice Replaces the caller's evidence (a new enclave image, a renewed report), approved by a
    /// verifier quorum exactly as at registration (the endpoint signed is the current one).
    function setAttestation(bytes32 digest, bytes32 measurement, uint64 deadline, bytes[] calldata verifierSignatures)
        external
    {
        Node storage n = _registered(msg.sender);
        _checkRegistration(msg.sender, n.role, n.endpoint, measurement, digest, deadline, verifierSignatures);
        n.attestationDigest = digest;
        n.measurement = measurement;
        emit AttestationUpdated(msg.sender, digest, measurement);
    }

    // ---- governance ----

    /// @notice Governance moves a node's endpoint (a local network's restarts; an operator's
    /// recovery).
    function setEndpointFor(address node, string calldata endpoint) external onlyRole(GOVERNOR_ROLE) {
        _registered(node).endpoint = endpoint;
        emit EndpointUpdated(node, endpoint);
    }

    /// @notice Approves or withdraws an execution profile the network can re-execute.
    function setProfile(bytes32 profileHash, bool approved) external onlyRole(GOVERNOR_ROLE) {
        approvedProfile[profileHash] = approved;
        emit ProfileSet(profileHash, approved);
    }

    function setEnabled(address node, bool enabled) external onlyRole(GOVERNOR_ROLE) {
        _registered(node).enabled = enabled;
        emit NodeEnabled(node, enabled);
    }

    function setMinStake(Role role, uint256 amount) external onlyRole(GOVERNOR_ROLE) {
        if (role == Role.None) revert InvalidRole();
        minStake[role] = amount;
        emit MinStakeSet(role, amount);
    }

    function setUnbondingDelay(uint64 delay) external onlyRole(GOVERNOR_ROLE) {
        unbondingDelay = delay;
        emit UnbondingDelaySet(delay);
    }

    function setHeartbeatTimeout(uint64 timeout) external onlyRole(GOVERNOR_ROLE) {
        heartbeatTimeout = timeout;
        emit HeartbeatTimeoutSet(timeout);
    }

    /// @notice Approves or revokes a measurement for `role`; nodes running a revoked one stop being active.
    function setMeasurement(Role role, bytes32 measurement, bool approved) external onlyRole(GOVERNOR_ROLE) {
        if (role == Role.None) revert InvalidRole();
        approvedMeasurement[role][measurement] = approved;
        emit MeasurementSet(role, measurement, approved);
    }

    function setRegistrationQuorum(uint16 quorum) external onlyRole(GOVERNOR_ROLE) {
        registrationQuorum = quorum;
        emit RegistrationQuorumSet(quorum);
    }

    /// @notice Takes up to `amount` from the node's stake (active first, then unbonding) and
    /// sends it to `to`. Returns what was taken.
    function slash(address node, uint256 amount, address to)
        external
        onlyRole(SLASHER_ROLE)
        nonReentrant
        returns (uint256 taken)
    {
        Node storage n = _registered(node);
        uint256 fromActive = amount < n.stake ? amount : n.stake;
        n.stake -= fromActive;
        uint256 rest = amount - fromActive;
        uint256 fromUnbonding = rest < n.unbonding ? rest : n.unbonding;
        n.unbonding -= fromUnbonding;
        taken = fromActive + fromUnbonding;
        emit Slashed(node, taken, to);
        if (taken > 0) stakeToken.safeTransfer(to, taken);
    }

    /// @notice The settlement contract opens a batch of `node`: its stake stays until it closes.
    function lockStake(address node) external onlyRole(SLASHER_ROLE) {
        _registered(node);
        uint256 open = ++openBatches[node];
        emit StakeLockChanged(node, open);
    }

    /// @notice The settlement contract closes (finalizes, voids or expires) a batch of `node`.
    function unlockStake(address node) external onlyRole(SLASHER_ROLE) {
        uint256 open = openBatches[node];
        if (open > 0) openBatches[node] = --open;
        emit StakeLockChanged(node, open);
    }

    // ---- queries ----

    function getNode(address node) external view returns (Node memory) {
        return _nodes[node];
    }

    /// @notice Registered, enabled, staked at least the role's minimum, running an approved
    /// measurement, and heard from recently.
    function isActive(address node, Role role) public view returns (bool) {
        Node storage n = _nodes[node];
        return n.role == role && role != Role.None && n.enabled && n.stake >= minStake[role]
            && approvedMeasurement[role][n.measurement]
            && (heartbeatTimeout == 0 || block.timestamp <= uint256(n.lastHeartbeat) + heartbeatTimeout);
    }

    function nodeCount() external view returns (uint256) {
        return _all.length;
    }

    /// @notice Active verifiers among registrations [offset, offset + limit) that declared
    /// `profileHash`.
    function profileVerifiers(bytes32 profileHash, uint256 offset, uint256 limit) external view returns (uint256 count) {
        uint256 end = offset + limit;
        if (end > _all.length) end = _all.length;
        for (uint256 i = offset; i < end; ++i) {
            address a = _all[i];
            if (verifiesProfile[a][profileHash] && isActive(a, Role.Verifier)) ++count;
        }
    }

    /// @notice Active nodes of `role` among registrations [offset, offset + limit).
    function activeNodes(Role role, uint256 offset, uint256 limit) external view returns (address[] memory out) {
        uint256 end = offset + limit;
        if (end > _all.length) end = _all.length;
        if (offset >= end) return new address[](0);
        address[] memory buf = new address[](end - offset);
        uint256 found;
        for (uint256 i = offset; i < end; ++i) {
            if (isActive(_all[i], role)) buf[found++] = _all[i];
        }
        out = new address[](found);
        for (uint256 i; i < found; ++i) {
            out[i] = buf[i];
        }
    }

    /// @notice The EIP-712 digest verifiers sign to approve a registration.
    function registrationDigest(
        address node,
        Role role,
        string memory endpoint,
        bytes32 measurement,
        bytes32 evidenceDigest,
        uint64 deadline
    ) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    REGISTRATION_TYPEHASH,
                    node,
                    uint8(role),
                    keccak256(bytes(endpoint)),
                    measurement,
                    evidenceDigest,
                    deadline
                )
            )
        );
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function _checkRegistration(
        address node,
        Role role,
        string memory endpoint,
        bytes32 measurement,
        bytes32 evidenceDigest,
        uint64 deadline,
        bytes[] calldata signatures
    ) private view {
        if (!approvedMeasurement[role][measurement]) revert MeasurementNotApproved(role, measurement);
        if (block.timestamp > deadline) revert RegistrationExpired(deadline);
        uint256 count = signatures.length;
        if (count < registrationQuorum) revert QuorumNotMet(count, registrationQuorum);
        bytes32 digest = registrationDigest(node, role, endpoint, measurement, evidenceDigest, deadline);
        address previous;
        for (uint256 i; i < count; ++i) {
            address signer = ECDSA.recover(digest, signatures[i]);
            if (signer <= previous) revert SignersNotAscending();
            if (!isActive(signer, Role.Verifier)) revert NotActiveVerifier(signer);
            previous = signer;
        }
    }

    function _registered(address node) private view returns (Node storage n) {
        n = _nodes[node];
        if (n.role == Role.None) revert NotRegistered(node);
    }
}
